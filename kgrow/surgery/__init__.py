"""Graph surgery on Keras Functional models: pure functions, no training.

* `graph`: walk, rebuild and re-bind Functional graphs.
* `transfer`: transfer plans mapping new variables to old ones.
* `channels`: channel-dependency groups (what must widen together).
* `width`: `scale_width` (shrink/widen any supported Functional model).
* `blocks` / `depth`: find repeated blocks, insert and remove them.
* `parameterization`: fan-in-aware initialization and per-layer LR factors
  (muP's rules) of any Functional model, for width growth.

Every architecture change returns a `GrowthResult(model, plan, info)`.
"""
from kgrow.surgery.blocks import Block, BlockStage, find_blocks, find_stages
from kgrow.surgery.channels import (ChannelGroup, UnsupportedLayerError, channel_groups,
                                    register_channel_rule, supported_layer_types)
from kgrow.surgery.depth import (describe_mapping, expansion_mapping, insert_blocks,
                                 interpolation_mapping, remove_blocks, set_depth)
from kgrow.surgery.parameterization import (OPTIMIZER_RULES, fan_in_initialize,
                                            fan_in_lr_factors, kernel_layer_roles, layer_fans,
                                            optimizer_rule)
from kgrow.surgery.graph import (Node, copy_layer, flat_nodes, is_graph_model, nodes, rebind,
                                 rebuild, require_functional, require_rebuildable)
from kgrow.surgery.transfer import NEW, GrowthResult, Resample, TransferPlan, VariableTransfer
from kgrow.surgery.width import scale_width

__all__ = [
    "Node", "copy_layer", "flat_nodes", "is_graph_model", "nodes", "rebind", "rebuild",
    "require_functional", "require_rebuildable", "NEW", "GrowthResult", "Resample", "TransferPlan", "VariableTransfer",
    "ChannelGroup", "UnsupportedLayerError", "channel_groups", "register_channel_rule",
    "supported_layer_types", "scale_width", "Block", "BlockStage", "find_blocks", "find_stages",
    "insert_blocks", "remove_blocks", "set_depth", "interpolation_mapping", "expansion_mapping",
    "describe_mapping", "OPTIMIZER_RULES", "fan_in_initialize", "fan_in_lr_factors",
    "kernel_layer_roles", "layer_fans", "optimizer_rule",
]
