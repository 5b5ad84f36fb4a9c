"""kgrow.models: the model zoo (CIFAR/ImageNet ResNets, ViT/DeiT).

All models are Keras 3 Functional models with regular layer names
(``stage{s}_block{b}_<part>`` for ResNets, ``block{i}_<part>`` for ViTs) so
that graph surgery, freezing and FLOPs counting can find their blocks; the
naming and where each residual branch ends are documented in
``kgrow.models.resnet`` and ``kgrow.models.vit``. Heads end in a
``predictions`` softmax layer (``classifier_activation=None`` gives logits).

Example:
    >>> import kgrow
    >>> model = kgrow.models.get("resnet20", (32, 32, 3), 10, width=0.5)
    >>> model.get_layer("stage1_block0_conv1").filters
    8
"""
from kgrow.models.layers import (
    INTERPOLATION_METHODS, ClassToken, DropPath, ElasticPositionEmbedding, PositionEmbedding,
    TokenPooling, interpolate_position_embedding)
from kgrow.models.registry import ModelSpec, available, get, register, spec
from kgrow.models.resnet import (
    cifar_blocks_per_stage, resnet_cifar, resnet_imagenet, scaled_filters)
from kgrow.models.vit import (
    VIT_PRESETS, drop_path_rates, encoder_block, patch_grid, resize_vit, vit)

__all__ = [
    "INTERPOLATION_METHODS", "VIT_PRESETS", "ClassToken", "DropPath", "ElasticPositionEmbedding",
    "ModelSpec",
    "PositionEmbedding", "TokenPooling", "available", "cifar_blocks_per_stage",
    "drop_path_rates", "encoder_block", "get", "interpolate_position_embedding",
    "patch_grid", "register", "resize_vit", "resnet_cifar", "resnet_imagenet",
    "scaled_filters", "spec", "vit",
]
