"""Graph surgery on Keras Functional models: pure functions, no training.

* `graph`: walk, rebuild and re-bind Functional graphs.
* `transfer`: transfer plans mapping new variables to old ones.
* `channels`: channel-dependency groups (what must widen together).
* `width`: `scale_width` (shrink/widen any supported Functional model).
* `blocks` / `depth`: find repeated blocks, insert and remove them.
"""
from kgrow.surgery.graph import (Node, copy_layer, flat_nodes, is_graph_model, nodes, rebind,
                                 rebuild, require_functional)
from kgrow.surgery.transfer import NEW, GrowthResult, TransferPlan, VariableTransfer

__all__ = ["Node", "copy_layer", "flat_nodes", "is_graph_model", "nodes", "rebind", "rebuild", "require_functional",
           "NEW", "GrowthResult", "TransferPlan", "VariableTransfer"]
