"""Residual networks (He et al. 2016) as Keras Functional models.

Two families:

* ``resnet_cifar(depth)``: the CIFAR network of the ResNet paper: a 3x3 stem
  conv, three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32, 64
  filters (stride 2 at the start of stages 2 and 3), global average pooling
  and a dense head. Depth 20, 32, 44, 56, 110, ... (any ``6n + 2``). Where the
  block changes shape the shortcut is a projection (1x1 conv + BN).
* ``resnet_imagenet(depth)``: the ImageNet network: 18/34 (basic blocks) and
  50/101/152 (bottleneck blocks, expansion 4), stages of 64, 128, 256, 512
  filters. The stride of a bottleneck sits on its 3x3 conv ("v1.5", as in
  torchvision). ``stem="imagenet"`` is 7x7 stride-2 conv + 3x3 stride-2 max
  pool; ``stem="cifar"`` is one 3x3 stride-1 conv for small images.

Both take a ``width`` multiplier: a layer with ``base`` filters gets
``scaled_filters(base, width)`` = ``max(1, round(base * width))`` (``widen``
for CIFAR multiplies further, e.g. ``widen=2`` for the 2x wide ResNet of
sparse-training papers).

Layer names (for graph surgery, freezing and FLOPs reports):

* stem: ``stem_conv``, ``stem_bn``, ``stem_relu`` (+ ``stem_pool``);
* block ``b`` (from 0) of stage ``s`` (from 1): ``stage{s}_block{b}_<part>``
  with parts ``conv1, bn1, relu1, conv2, bn2`` (+ ``relu2, conv3, bn3`` in a
  bottleneck), ``shortcut_conv, shortcut_bn`` when the shape changes,
  ``add`` (shortcut + branch) and ``out`` (the ReLU after the add, the block
  output);
* head: ``avg_pool``, ``head`` (Dense, logits), ``predictions`` (Activation).

Every ReLU is its own ``Activation`` layer and every conv is followed by a
``BatchNormalization`` (convs have no bias), so each op is a separate node.

Where the residual branch ends: the last ``BatchNormalization`` of the branch,
``stage{s}_block{b}_bn2`` in a basic block and ``stage{s}_block{b}_bn3`` in a
bottleneck. Setting its ``gamma`` and ``beta`` to zero makes the branch output
zero, so the block computes ``relu(shortcut)``; for a block with an identity
shortcut whose input is a block output (already >= 0, being a ReLU output)
that is the identity, which is what depth growth by inserting blocks relies on.

Convolutions use ``padding="same"`` and channels-last data.
"""
import dataclasses

import keras

from kgrow.models import _checks

#: CIFAR ResNet stage widths (before the width multiplier).
CIFAR_FILTERS = (16, 32, 64)
#: ImageNet ResNet stage widths (before the width multiplier and expansion).
IMAGENET_FILTERS = (64, 128, 256, 512)
#: Output channels of a bottleneck block relative to its inner width.
BOTTLENECK_EXPANSION = 4
#: ImageNet depths: (block type, blocks per stage).
IMAGENET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
#: Accepted ``stem`` values of ``resnet_imagenet``.
STEMS = ("auto", "cifar", "imagenet")
#: ``stem="auto"`` picks the CIFAR stem up to this height and width.
AUTO_STEM_MAX_SIZE = 64


def scaled_filters(base, width=1.0, widen=1):
    """Number of filters of a layer with ``base`` filters at a width multiplier.

    Args:
        base: Filters at width 1.
        width: Float multiplier (> 0).
        widen: Integer multiplier (>= 1), applied together with ``width``.

    Returns:
        ``max(1, round(base * width * widen))`` (Python rounding).

    Example:
        >>> scaled_filters(16, 0.5), scaled_filters(16, 1.0, widen=2), scaled_filters(16, 0.01)
        (8, 32, 1)
    """
    return max(1, int(round(base * float(width) * int(widen))))


def cifar_blocks_per_stage(depth):
    """Blocks per stage ``n`` of a CIFAR ResNet of ``depth = 6n + 2`` layers.

    Example:
        >>> cifar_blocks_per_stage(20), cifar_blocks_per_stage(110)
        (3, 18)
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 \
            or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, "
            f"110), got {depth!r}. For ImageNet depths (18, 34, 50, 101, 152) use "
            "resnet_imagenet.")
    return (depth - 2) // 6


@dataclasses.dataclass(frozen=True)
class _LayerFactory:
    """Creates the conv/BN/ReLU layers of a ResNet with shared settings."""

    kernel_initializer: object
    weight_decay: float
    bn_momentum: float
    bn_epsilon: float
    zero_init_residual: bool

    def _regularizer(self):
        # PyTorch/SGD weight decay adds wd * w to the gradient; an L2 penalty
        # l2 * sum(w^2) adds 2 * l2 * w, hence the factor 1/2.
        if self.weight_decay == 0.0:
            return None
        return keras.regularizers.L2(self.weight_decay / 2.0)

    def conv(self, filters, kernel_size, strides, name):
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False,
            kernel_initializer=_checks.new_initializer(self.kernel_initializer),
            kernel_regularizer=self._regularizer(), name=name)

    def bn(self, name, branch_end=False):
        gamma = "zeros" if branch_end and self.zero_init_residual else "ones"
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            gamma_initializer=gamma, name=name)

    @staticmethod
    def relu(name):
        return keras.layers.Activation("relu", name=name)

    def dense(self, units, name):
        return keras.layers.Dense(units, kernel_regularizer=self._regularizer(),
                                  name=name)


def _shortcut(x, filters, strides, prefix, f):
    """Identity, or 1x1 conv + BN when the stride or channel count changes."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    x = f.conv(filters, 1, strides, f"{prefix}_shortcut_conv")(x)
    return f.bn(f"{prefix}_shortcut_bn")(x)


def basic_block(x, filters, strides, prefix, f):
    """Two 3x3 convs; the branch ends at ``{prefix}_bn2``."""
    shortcut = _shortcut(x, filters, strides, prefix, f)
    y = f.conv(filters, 3, strides, f"{prefix}_conv1")(x)
    y = f.bn(f"{prefix}_bn1")(y)
    y = f.relu(f"{prefix}_relu1")(y)
    y = f.conv(filters, 3, 1, f"{prefix}_conv2")(y)
    y = f.bn(f"{prefix}_bn2", branch_end=True)(y)
    y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    return f.relu(f"{prefix}_out")(y)


def bottleneck_block(x, filters, strides, prefix, f):
    """1x1 -> 3x3 (strided) -> 1x1 x4; the branch ends at ``{prefix}_bn3``."""
    out_filters = filters * BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out_filters, strides, prefix, f)
    y = f.conv(filters, 1, 1, f"{prefix}_conv1")(x)
    y = f.bn(f"{prefix}_bn1")(y)
    y = f.relu(f"{prefix}_relu1")(y)
    y = f.conv(filters, 3, strides, f"{prefix}_conv2")(y)
    y = f.bn(f"{prefix}_bn2")(y)
    y = f.relu(f"{prefix}_relu2")(y)
    y = f.conv(out_filters, 1, 1, f"{prefix}_conv3")(y)
    y = f.bn(f"{prefix}_bn3", branch_end=True)(y)
    y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    return f.relu(f"{prefix}_out")(y)


_BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def _stages(x, block, filters, blocks, first_stride, f):
    """Stacks the stages; stage 1 keeps the resolution, later ones halve it."""
    for s, (stage_filters, num_blocks) in enumerate(zip(filters, blocks), start=1):
        for b in range(num_blocks):
            strides = (first_stride if s == 1 else 2) if b == 0 else 1
            x = _BLOCKS[block](x, stage_filters, strides, f"stage{s}_block{b}", f)
    return x


def _head(x, num_classes, activation, f):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = f.dense(num_classes, "head")(x)
    # float32 output keeps the softmax stable under a mixed-precision policy.
    return keras.layers.Activation(activation, name="predictions", dtype="float32")(x)


def _factory(kernel_initializer, weight_decay, bn_momentum, bn_epsilon,
             zero_init_residual):
    _checks.new_initializer(kernel_initializer)  # fail early on a bad spec
    momentum = _checks.rate("bn_momentum", bn_momentum)
    return _LayerFactory(
        kernel_initializer=kernel_initializer,
        weight_decay=_checks.non_negative_float("weight_decay", weight_decay),
        bn_momentum=momentum,
        bn_epsilon=_checks.positive_float("bn_epsilon", bn_epsilon),
        zero_init_residual=bool(zero_init_residual))


def resnet_cifar(depth, input_shape=(32, 32, 3), num_classes=10, *, width=1.0,
                 widen=1, classifier_activation="softmax", kernel_initializer="he_normal",
                 weight_decay=0.0, bn_momentum=0.9, bn_epsilon=1e-5,
                 zero_init_residual=False, name=None):
    """CIFAR-style ResNet of ``depth = 6n + 2`` layers (basic blocks, 16/32/64 filters).

    Args:
        depth: 20, 32, 44, 56, 110 or any other ``6n + 2`` (n >= 1).
        input_shape: ``(height, width, channels)``; height/width may be ``None``
            for a model that accepts any resolution.
        num_classes: Size of the classification head.
        width: Float multiplier of every layer's filters (see ``scaled_filters``).
        widen: Integer multiplier of the filters (2 = the "2x wide" ResNet).
        classifier_activation: Activation of the ``predictions`` layer;
            ``"softmax"`` (default, for ``categorical_crossentropy``) or
            ``None`` for logits.
        kernel_initializer: Initializer of the conv kernels.
        weight_decay: Coupled weight decay in the PyTorch/SGD convention
            (gradient += weight_decay * w) on conv and dense kernels, added as
            an L2 loss of ``weight_decay / 2``. 0 disables it.
        bn_momentum: BatchNormalization moving-average momentum (Keras
            convention; 0.9 equals PyTorch's 0.1).
        bn_epsilon: BatchNormalization epsilon (PyTorch default 1e-5).
        zero_init_residual: Start every residual branch's last BN with gamma 0.
        name: Model name (default ``f"resnet{depth}"``).

    Returns:
        An uncompiled Functional ``keras.Model``.

    Example:
        >>> model = resnet_cifar(20, (32, 32, 3), 10, width=0.5)
        >>> model.output_shape, model.get_layer("stage3_block2_conv2").filters
        ((None, 10), 32)
    """
    blocks = cifar_blocks_per_stage(depth)
    width = _checks.positive_float("width", width)
    widen = _checks.positive_int("widen", widen)
    input_shape = _checks.image_shape(input_shape, allow_unknown_spatial=True)
    num_classes, activation = _checks.classifier(num_classes, classifier_activation)
    f = _factory(kernel_initializer, weight_decay, bn_momentum, bn_epsilon,
                 zero_init_residual)
    filters = [scaled_filters(base, width, widen) for base in CIFAR_FILTERS]

    inputs = keras.Input(shape=input_shape, name="input")
    x = f.conv(filters[0], 3, 1, "stem_conv")(inputs)
    x = f.bn("stem_bn")(x)
    x = f.relu("stem_relu")(x)
    x = _stages(x, "basic", filters, (blocks,) * 3, 1, f)
    outputs = _head(x, num_classes, activation, f)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def _resolve_stem(stem, input_shape):
    _checks.choice("stem", stem, STEMS)
    if stem != "auto":
        return stem
    height, width = input_shape[:2]
    if height is None or width is None:
        raise ValueError("stem='auto' chooses by image size, which is unknown in "
                         f"input_shape {input_shape}; pass stem='cifar' or "
                         "stem='imagenet'.")
    small = max(height, width) <= AUTO_STEM_MAX_SIZE
    return "cifar" if small else "imagenet"


def resnet_imagenet(depth, input_shape=(224, 224, 3), num_classes=1000, *, width=1.0,
                    stem="auto", classifier_activation="softmax",
                    kernel_initializer="he_normal", weight_decay=0.0, bn_momentum=0.9,
                    bn_epsilon=1e-5, zero_init_residual=False, name=None):
    """ImageNet-style ResNet 18/34 (basic) or 50/101/152 (bottleneck).

    Args:
        depth: One of 18, 34, 50, 101, 152.
        input_shape: ``(height, width, channels)``; height/width may be
            ``None`` (then ``stem`` must be given explicitly).
        num_classes: Size of the classification head.
        width: Float multiplier of every layer's filters (see ``scaled_filters``);
            bottleneck outputs are 4x the scaled inner width.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool), ``"cifar"`` (3x3/1
            conv, no pool, for small images) or ``"auto"``: ``"cifar"`` when
            height and width are at most ``AUTO_STEM_MAX_SIZE`` (64).
        classifier_activation: ``"softmax"`` (default) or ``None`` for logits.
        kernel_initializer: Initializer of the conv kernels.
        weight_decay: Coupled weight decay, PyTorch/SGD convention (see
            ``resnet_cifar``).
        bn_momentum: BatchNormalization momentum (Keras convention).
        bn_epsilon: BatchNormalization epsilon.
        zero_init_residual: Start every residual branch's last BN with gamma 0.
        name: Model name (default ``f"resnet{depth}"``).

    Returns:
        An uncompiled Functional ``keras.Model``.

    Example:
        >>> model = resnet_imagenet(50, (64, 64, 3), 100, width=0.25, stem="cifar")
        >>> model.get_layer("stage4_block2_conv3").filters
        512
    """
    if isinstance(depth, bool) or not isinstance(depth, int) \
            or depth not in IMAGENET_LAYOUTS:
        raise ValueError(f"ImageNet ResNet depth must be one of "
                         f"{sorted(IMAGENET_LAYOUTS)}, got {depth!r}. For CIFAR "
                         "depths (6n + 2, e.g. 20, 56, 110) use resnet_cifar.")
    block, blocks = IMAGENET_LAYOUTS[depth]
    width = _checks.positive_float("width", width)
    input_shape = _checks.image_shape(input_shape, allow_unknown_spatial=True)
    stem = _resolve_stem(stem, input_shape)
    num_classes, activation = _checks.classifier(num_classes, classifier_activation)
    f = _factory(kernel_initializer, weight_decay, bn_momentum, bn_epsilon,
                 zero_init_residual)
    filters = [scaled_filters(base, width) for base in IMAGENET_FILTERS]

    inputs = keras.Input(shape=input_shape, name="input")
    if stem == "imagenet":
        x = f.conv(filters[0], 7, 2, "stem_conv")(inputs)
    else:
        x = f.conv(filters[0], 3, 1, "stem_conv")(inputs)
    x = f.bn("stem_bn")(x)
    x = f.relu("stem_relu")(x)
    if stem == "imagenet":
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    x = _stages(x, block, filters, blocks, 1, f)
    outputs = _head(x, num_classes, activation, f)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")
