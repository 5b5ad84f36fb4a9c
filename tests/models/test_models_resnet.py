"""CIFAR and ImageNet ResNets: structure, parameter counts, errors, training."""
import keras
import numpy as np
import pytest

from kgrow import models


# ---------------------------------------------------------------- hand formulas
def _conv(k, cin, cout):
    return k * k * cin * cout  # no bias


def _bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def cifar_resnet_params(n, widths, in_channels, num_classes):
    """All weights (incl. BN moving stats) of a CIFAR ResNet, from the paper's layout."""
    total = _conv(3, in_channels, widths[0]) + _bn(widths[0])
    cin = widths[0]
    for stage, w in enumerate(widths):
        for block in range(n):
            total += _conv(3, cin, w) + _bn(w) + _conv(3, w, w) + _bn(w)
            downsample = stage > 0 and block == 0
            if downsample or cin != w:
                total += _conv(1, cin, w) + _bn(w)
            cin = w
    return total + cin * num_classes + num_classes


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# ---------------------------------------------------------------- CIFAR ResNet
def test_resnet20_param_count_matches_hand_formula():
    model = models.get("resnet20", (32, 32, 3), 10)
    expected = cifar_resnet_params(3, (16, 32, 64), 3, 10)
    assert model.count_params() == expected
    assert 0.26e6 < expected < 0.28e6  # the paper's "0.27M"


def test_width_and_widen_param_count():
    model = models.resnet_cifar(14, (28, 28, 1), 7, width=0.5, widen=2)
    # width 0.5 * widen 2 = the original widths.
    assert model.count_params() == cifar_resnet_params(2, (16, 32, 64), 1, 7)
    wide = models.resnet_cifar(14, (28, 28, 1), 7, width=0.75, widen=2)
    assert wide.count_params() == cifar_resnet_params(2, (24, 48, 96), 1, 7)


def test_width_multiplier_sets_channels():
    cases = [
        (0.5, 1, (8, 16, 32)),
        (1.3, 1, (21, 42, 83)),     # round(20.8), round(41.6), round(83.2)
        (1.0, 2, (32, 64, 128)),
        (0.01, 1, (1, 1, 1)),       # never below one filter
    ]
    for width, widen, expected in cases:
        model = models.resnet_cifar(8, (8, 8, 3), 10, width=width, widen=widen)
        for stage, filters in enumerate(expected, start=1):
            for conv in ("conv1", "conv2"):
                assert model.get_layer(f"stage{stage}_block0_{conv}").filters == filters
        assert model.get_layer("stem_conv").filters == expected[0]
    assert models.scaled_filters(64, 0.3) == 19  # round(19.2)


def test_cifar_presets_build():
    for name, depth in (("resnet20", 20), ("resnet32", 32), ("resnet56", 56),
                        ("resnet110", 110)):
        model = models.get(name, (28, 28, 1), 10, width=0.25)
        assert model.output_shape == (None, 10)
        n = (depth - 2) // 6
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
        # stem + 2 per block + 2 projection shortcuts; the 3x3 convs plus the
        # head make the paper's depth.
        assert len(convs) == 1 + 2 * 3 * n + 2
        assert len([c for c in convs if c.kernel_size == (3, 3)]) + 1 == depth
        assert model.get_layer(f"stage3_block{n - 1}_out") is not None


def test_resnet20_forward_and_softmax():
    model = models.get("resnet20", (28, 28, 1), 10, width=0.25)
    out = model(np.random.rand(3, 28, 28, 1).astype("float32")).numpy()
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    logits = models.resnet_cifar(8, (28, 28, 1), 10, classifier_activation=None)
    assert logits.get_layer("predictions").get_config()["activation"] == "linear"


def test_block_layout_and_names():
    model = models.resnet_cifar(20, (16, 16, 3), 10)
    names = {l.name for l in model.layers}
    for s in (1, 2, 3):
        for b in range(3):
            for part in ("conv1", "bn1", "relu1", "conv2", "bn2", "add", "out"):
                assert f"stage{s}_block{b}_{part}" in names
    shortcuts = sorted(n for n in names if n.endswith("shortcut_conv"))
    assert shortcuts == ["stage2_block0_shortcut_conv", "stage3_block0_shortcut_conv"]
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
            assert layer.get_config()["activation"] == "linear"
    relus = [l for l in model.layers if isinstance(l, keras.layers.Activation)
             and l.get_config()["activation"] == "relu"]
    assert len(relus) == 1 + 2 * 9  # stem + (relu1, out) per block
    assert isinstance(model.get_layer("stage2_block0_bn2"),
                      keras.layers.BatchNormalization)


def test_zeroed_last_bn_makes_block_identity():
    model = models.resnet_cifar(20, (16, 16, 3), 10)
    bn2 = model.get_layer("stage2_block1_bn2")
    gamma, beta, mean, var = bn2.get_weights()
    bn2.set_weights([np.zeros_like(gamma), np.zeros_like(beta), mean, var])
    probe = keras.Model(model.input, [model.get_layer("stage2_block0_out").output,
                                      model.get_layer("stage2_block1_out").output])
    before, after = probe(np.random.rand(2, 16, 16, 3).astype("float32"), training=False)
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-6)


def test_zero_init_residual():
    model = models.resnet_cifar(20, (16, 16, 3), 10, zero_init_residual=True)
    for layer in model.layers:
        if layer.name.endswith("_bn2"):
            assert np.all(layer.gamma.numpy() == 0.0)
        elif isinstance(layer, keras.layers.BatchNormalization):
            assert np.all(layer.gamma.numpy() == 1.0)


def test_weight_decay_is_half_l2_on_kernels():
    model = models.resnet_cifar(8, (8, 8, 1), 3, weight_decay=1e-3)
    kernels = [l.kernel for l in model.layers
               if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(model.losses) == len(kernels)
    expected = sum(0.5e-3 * float(np.sum(k.numpy() ** 2)) for k in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_unknown_spatial_size_accepts_any_resolution():
    model = models.resnet_cifar(8, (None, None, 3), 4)
    for size in (16, 24):
        assert model(np.zeros((1, size, size, 3), "float32")).shape == (1, 4)


def test_bad_cifar_depth():
    for depth in (21, 7, 2, 0, -4, 20.0, "20", True):
        with pytest.raises(ValueError, match=r"6n \+ 2"):
            models.resnet_cifar(depth)


def test_imagenet_depth_to_cifar_builder_points_to_imagenet():
    with pytest.raises(ValueError, match="resnet_imagenet"):
        models.resnet_cifar(18)
    with pytest.raises(ValueError, match=r"\[18, 34, 50, 101, 152\].*resnet_cifar"):
        models.resnet_imagenet(20)


def test_bad_cifar_arguments():
    cases = [
        ({"width": 0}, ValueError, "width"),
        ({"width": -0.5}, ValueError, "width"),
        ({"width": "1"}, TypeError, "width"),
        ({"widen": 1.5}, TypeError, "widen"),
        ({"widen": 0}, ValueError, "widen"),
        ({"input_shape": (32, 32)}, ValueError, "height, width, channels"),
        ({"num_classes": 1}, ValueError, "sigmoid"),
        ({"classifier_activation": "nope"}, ValueError, "classifier_activation"),
        ({"bn_momentum": 1.5}, ValueError, "bn_momentum"),
        ({"kernel_initializer": "nope"}, ValueError, "initializer"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            models.resnet_cifar(20, **kwargs)


# ---------------------------------------------------------------- ImageNet ResNet
def test_imagenet_trainable_params_match_torchvision():
    # torchvision's documented parameter counts for resnet18 / resnet50
    # (ImageNet stem, 1000 classes); BN moving statistics are not parameters there.
    for depth, published in ((18, 11_689_512), (50, 25_557_032)):
        model = models.get(f"resnet{depth}", (32, 32, 3), 1000, stem="imagenet")
        assert trainable_count(model) == published


def test_bottleneck_width_and_expansion():
    model = models.get("resnet50", (32, 32, 3), 10, width=0.5)
    assert model.get_layer("stage1_block0_conv1").filters == 32
    assert model.get_layer("stage4_block2_conv2").filters == 256
    assert model.get_layer("stage4_block2_conv3").filters == 1024
    assert model.get_layer("stage1_block0_shortcut_conv").filters == 128
    assert isinstance(model.get_layer("stage3_block5_bn3"), keras.layers.BatchNormalization)
    assert model.output_shape == (None, 10)


def test_imagenet_stems():
    small = models.resnet_imagenet(18, (32, 32, 3), 10, width=0.125)  # auto -> cifar
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert "stem_pool" not in {l.name for l in small.layers}
    assert small.get_layer("stage1_block0_out").output.shape[1:3] == (32, 32)
    big = models.resnet_imagenet(18, (96, 96, 3), 10, width=0.125)  # auto -> imagenet
    assert big.get_layer("stem_conv").kernel_size == (7, 7)
    assert big.get_layer("stage1_block0_out").output.shape[1:3] == (24, 24)
    assert big.get_layer("stage4_block1_out").output.shape[1:3] == (3, 3)
    forced = models.resnet_imagenet(18, (32, 32, 3), 10, width=0.125, stem="imagenet")
    assert forced.get_layer("stage1_block0_out").output.shape[1:3] == (8, 8)


def test_imagenet_stem_errors_and_other_presets():
    with pytest.raises(ValueError, match="stem='cifar' or stem='imagenet'"):
        models.resnet_imagenet(18, (None, None, 3), 10)
    with pytest.raises(ValueError, match="stem"):
        models.resnet_imagenet(18, (32, 32, 3), 10, stem="tiny")
    for name in ("resnet34", "resnet101"):  # 18 and 50 are built above
        model = models.get(name, (32, 32, 3), 5, width=0.125)
        assert model.output_shape == (None, 5)


def test_two_step_fit_changes_weights():
    model = models.get("resnet20", (8, 8, 3), 4, width=0.25)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x = np.random.rand(8, 8, 8, 3).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 4, 4)
    before = model.get_layer("stem_conv").kernel.numpy().copy()
    history = model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, model.get_layer("stem_conv").kernel.numpy())
