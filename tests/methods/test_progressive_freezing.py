"""Progressive layer freezing (SpFDE): blocks, FLOPs plan, schedule, per-block LR,
frozen weights, retraces, growth, resume and MirroredStrategy."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kgrow import data, flops, models
from kgrow.callbacks import Growth, ProgressiveFreezing
from kgrow.controller import ControllerCheckpoint, Masks, TrainingController
from kgrow.methods.progressive_freezing import (block_lr_multiplier, block_pattern,
                                                find_freeze_blocks, freeze_plan,
                                                freeze_schedule, prefix_flops, schedule_saving)
from kgrow.schedules import GrowthSchedule, Stage
from testing_helpers import CrashAtEpoch, assert_weights_match


def _resnet(width=0.25):
    return models.get("resnet20", (8, 8, 3), 10, width=width)


def _arrays(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, 8, 8, 3)).astype("float32"),
            keras.utils.to_categorical(rng.integers(0, 10, n), 10))


def _live_op_types(model, x, y):
    """Op types the compiled train step really runs (ops nothing depends on are pruned)."""
    step = tf.function(lambda a, b: model.train_step((a, b)))
    graph = step.get_concrete_function(tf.TensorSpec((None,) + x.shape[1:], tf.float32),
                                       tf.TensorSpec((None,) + y.shape[1:], tf.float32)).graph
    stack = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = {}
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen[op.name] = op.type
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    types = list(seen.values())
    return types.count("Conv2DBackpropFilter"), types.count("Conv2DBackpropInput")


def _weights(model):
    return {v.path: v.numpy().copy() for v in model.weights}


# --------------------------------------------------------------------------- functional form


def test_blocks_of_resnet20_stem_joins_first_head_stays_out():
    model = _resnet()
    groups = find_freeze_blocks(model)
    assert len(groups) == 9
    assert groups[0][:2] == ["stem_conv", "stem_bn"]
    assert all(n.startswith(f"stage{1 + b // 3}_block{b % 3}_") for b, g in enumerate(groups)
               for n in (g[2:] if b == 0 else g))
    assert "stage2_block0_shortcut_conv" in groups[3]
    grouped = {n for g in groups for n in g}
    assert "head" not in grouped
    # every layer with weights but the head is in exactly one group
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert weighted - grouped == {"head"}
    stages = find_freeze_blocks(model, unit="stage")
    assert [len(s) for s in stages] == [sum(len(g) for g in groups[3 * i:3 * i + 3])
                                        for i in range(3)]
    by_stage = find_freeze_blocks(
        model, lambda layer: layer.name.split("_")[0] if layer.name.startswith("stage") else None)
    assert by_stage == [[n for n in s if n.startswith("stage")] for s in stages]
    assert find_freeze_blocks(model, [["stem_conv", "stem_bn"], ["stage1_block0_conv1"]]) == [
        ["stem_conv", "stem_bn"], ["stage1_block0_conv1"]]
    with pytest.raises(ValueError, match="not layers with trainable weights"):
        find_freeze_blocks(model, [["stem_conv", "nope"]])
    with pytest.raises(ValueError, match="disjoint"):
        find_freeze_blocks(model, [["stem_conv"], ["stem_conv"]])
    with pytest.raises(ValueError, match="front to back"):
        find_freeze_blocks(model, [["stage2_block0_conv1"], ["stem_conv"]])
    with pytest.raises(ValueError, match="unit"):
        find_freeze_blocks(model, unit="layer")


def test_prefix_flops_come_from_kgrow_flops_and_leave_flags_alone():
    model = _resnet()
    groups = find_freeze_blocks(model)
    costs = prefix_flops(model, groups)
    assert all(layer.trainable for layer in model.layers)
    assert costs[0] == flops.count(model).training
    assert all(a > b for a, b in zip(costs, costs[1:]))
    for layer in model.layers:
        if layer.name in groups[0] or layer.name in groups[1]:
            layer.trainable = False
    report = flops.count(model)
    assert costs[2] == report.training
    # the frozen prefix saves its activation gradients too
    assert report.layer("stage1_block1_conv2").input_grad == 0.0
    assert report.layer("stage1_block2_conv1").input_grad == 0.0  # first trainable: no input grad
    assert report.layer("stage1_block2_conv2").input_grad > 0.0


def test_plan_reaches_target_with_fewest_blocks_and_refuses_bad_settings():
    model = _resnet()
    plan = freeze_plan(model, 0.15, epochs=5, interval=1, start=1)
    assert plan.freeze_epochs == (1, 2, 3) and plan.num_frozen == 3
    assert plan.saving >= 0.15
    assert schedule_saving(plan.costs, freeze_schedule(2, 1, 1, 5), 5) < 0.15
    assert plan.saving == pytest.approx(schedule_saving(plan.costs, [1, 2, 3], 5))

    derived = freeze_plan(model, 0.25, epochs=40, interval=4)
    assert derived.saving >= 0.25 and derived.start % 4 == 0
    assert list(derived.freeze_epochs) == freeze_schedule(derived.num_frozen, derived.start, 4, 40)
    # T_frz is the latest grid epoch that still reaches the target
    later = schedule_saving(derived.costs, freeze_schedule(7, derived.start + 4, 4, 40), 40)
    assert later < 0.25
    assert freeze_plan(model, 0.10, epochs=40, interval=4).start > derived.start

    with pytest.raises(ValueError, match="unreachable.*at most"):
        freeze_plan(model, 0.6, epochs=10, interval=1)
    with pytest.raises(ValueError, match="unreachable"):
        freeze_plan(model, 0.2, epochs=10, interval=2, start=8)
    with pytest.raises(ValueError, match="beyond the run"):
        freeze_plan(model, 0.1, epochs=10, interval=1, start=10)
    with pytest.raises(ValueError, match="interval"):
        freeze_plan(model, 0.1, epochs=10, interval=0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        freeze_plan(model, 1.2, epochs=10, interval=1)
    late = freeze_plan(model, 0.05, epochs=10, interval=4, earliest=5)
    assert late.earliest == 5 and min(late.freeze_epochs) >= 5 and late.saving >= 0.05
    # Off the dT grid, the earliest epoch is the last candidate for T_frz.
    assert late.start == 5 and late.freeze_epochs == (5,)
    assert type(late).from_dict(late.to_dict()) == late
    with pytest.raises(ValueError, match=r"start \(T_frz\) = 3 is before epoch 5"):
        freeze_plan(model, 0.1, epochs=10, interval=1, start=3, earliest=5)
    with pytest.raises(ValueError, match="Nothing can freeze"):
        freeze_plan(model, 0.1, epochs=10, interval=1, earliest=10)
    with pytest.raises(ValueError, match=r"unreachable.*nothing freezes before epoch 8"):
        freeze_plan(model, 0.3, epochs=10, interval=1, earliest=8)
    with pytest.raises(ValueError, match="interval"):
        ProgressiveFreezing(0.2, interval=-1)
    with pytest.raises(ValueError, match="beyond the run"):
        ProgressiveFreezing(0.2, epochs=10, start=12)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ProgressiveFreezing(0.0)


def test_block_lr_multiplier_formula():
    assert block_lr_multiplier(0, 6, 12) == 1.0
    assert block_lr_multiplier(6, 6, 12) == 0.0
    assert block_lr_multiplier(3, 6, 12) == pytest.approx(0.5 / (0.5 * (1 + math.cos(math.pi / 4))))
    assert block_lr_multiplier(3, 6, 12, "constant") == pytest.approx(0.5)
    assert 0 < block_lr_multiplier(5, 6, 12) < 0.2
    with pytest.raises(ValueError, match="global_lr"):
        block_lr_multiplier(1, 2, 3, "linear")


# --------------------------------------------------------------------------- callback


def test_callback_freezes_on_schedule_keeps_weights_and_bn_stats_one_retrace_per_event():
    keras.utils.set_random_seed(1)
    model = _resnet()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    controller = TrainingController.of(model)
    masks = Masks.of(controller)
    mask = (np.arange(np.prod(model.get_layer("stage1_block0_conv1").kernel.shape)) % 2).reshape(
        model.get_layer("stage1_block0_conv1").kernel.shape)
    masks.set({"stage1_block0_conv1/kernel": mask})
    x, y = _arrays()
    cb = ProgressiveFreezing(0.15, epochs=5, interval=1, start=1)
    snaps, mults = {}, {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps[epoch] = _weights(model)
            mults[epoch] = dict(controller.lr_multipliers)

    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0, shuffle=False,
                        callbacks=[cb, Snap()])
    plan = cb.plan
    assert plan.freeze_epochs == (1, 2, 3)
    assert [e["epoch"] for e in cb.events] == [1, 2, 3]
    assert controller.retrace_count == 1 + 3  # the first trace + one per freeze event
    groups = plan.groups
    assert sorted(controller.frozen) == sorted(n for g in groups[:3] for n in g)
    assert history.history["freeze/blocks"] == [0.0, 1.0, 2.0, 3.0, 3.0]
    fractions = history.history["freeze/frozen_fraction"]
    assert fractions[0] == 0.0 and all(a < b for a, b in zip(fractions[:4], fractions[1:4]))
    assert history.history["freeze/step_flops_saving"][3] == pytest.approx(plan.step_saving(3))

    for b, freeze_epoch in enumerate(plan.freeze_epochs):
        paths = [p for p in snaps[0] if p.split("/")[0] in groups[b]]
        assert any("moving_mean" in p for p in paths)
        # trained until its freeze epoch, bit-identical (BN statistics included) after
        assert any(not np.array_equal(snaps[freeze_epoch - 1][p], snaps[0][p]) for p in paths
                   ) or freeze_epoch == 1
        for epoch in range(freeze_epoch, 5):
            for p in paths:
                np.testing.assert_array_equal(snaps[epoch][p], snaps[freeze_epoch - 1][p], p)
    assert not np.array_equal(snaps[4]["head/kernel"], snaps[3]["head/kernel"])
    np.testing.assert_array_equal(masks.get()["stage1_block0_conv1/kernel"], mask)
    assert np.all(model.get_layer("stage1_block0_conv1").kernel.numpy()[mask == 0] == 0.0)

    # backward really skipped: 21 convolutions, 7 of them (stem + 3 blocks) frozen; the two
    # reading the frozen prefix (stage2_block0 conv1 and shortcut) need no input gradient
    assert _live_op_types(model, x, y) == (14, 12)
    controller.unfreeze()
    assert _live_op_types(model, x, y) == (21, 20)  # the stem's input needs no gradient
    for epoch in range(5):
        expected = {block_pattern(g): (0.0 if epoch >= f else
                                       0.5 * (1 + math.cos(math.pi * epoch / f))
                                       / (0.5 * (1 + math.cos(math.pi * epoch / 5))))
                    for g, f in zip(groups, plan.freeze_epochs)}
        assert mults[epoch].keys() == expected.keys()
        for key, value in expected.items():
            assert mults[epoch][key] == pytest.approx(value, rel=1e-6), (epoch, key)


def test_freezing_waits_until_grown_layers_trained_an_epoch_at_their_final_size():
    keras.utils.set_random_seed(2)
    model = _resnet(width=0.5)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    x, y = _arrays()
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)]),
                  initializer="orthogonal", verbose=0)
    assert grow.planned_changes() == {"architecture": [2]}
    cb = ProgressiveFreezing(0.05, epochs=6, interval=1)
    snaps = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps[epoch] = _weights(model)

    # Freezing listed first: it plans from the whole fit's callbacks, not only
    # those whose on_train_begin already ran.
    model.fit(x, y, batch_size=16, epochs=6, verbose=0, shuffle=False,
              callbacks=[cb, grow, Snap()])
    assert [e["epoch"] for e in grow.events] == [0, 2]
    plan = cb.plan
    assert plan.earliest == 3 and plan.freeze_epochs and min(plan.freeze_epochs) >= 3
    assert plan.saving >= 0.05
    first = cb.events[0]["epoch"]
    kernel = "stage1_block0_conv1/kernel"
    # The new input channels of the first block start with zero fan-out
    # (function-preserving) and must have trained before the block froze.
    assert snaps[1][kernel].shape[2] * 2 == snaps[2][kernel].shape[2]
    new_channels = snaps[first - 1][kernel][:, :, snaps[1][kernel].shape[2]:, :]
    assert np.abs(new_channels).max() > 0.0
    frozen = [p for p in snaps[5] if p.split("/")[0] in plan.groups[0]]
    assert kernel in frozen
    for p in frozen:
        np.testing.assert_array_equal(snaps[5][p], snaps[first][p], p)

    # T_frz given before the last growth step: refused before the first step.
    model = _resnet(width=0.5)
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(2, width=1.0)]), verbose=0)
    with pytest.raises(ValueError, match=r"start \(T_frz\) = 1 is before epoch 3"):
        model.fit(x, y, batch_size=16, epochs=6, verbose=0,
                  callbacks=[grow, ProgressiveFreezing(0.1, epochs=6, interval=1, start=1)])
    assert not TrainingController.of(model).frozen


def test_a_growth_step_after_blocks_froze_stops_training():
    keras.utils.set_random_seed(3)
    model = _resnet(width=0.5)
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    x, y = _arrays(32)
    grow = Growth(GrowthSchedule([Stage(0, width=0.5), Stage(1, width=1.0)]), verbose=0)

    class ChooseLater(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # a stage chosen at run time, after the first freeze
                grow.set_next_stage(width=0.75)

    cb = ProgressiveFreezing(0.1, epochs=5, interval=1, start=2)
    with pytest.raises(RuntimeError, match="architecture changed .* after blocks froze at "
                                           "epoch 2"):
        model.fit(x, y, batch_size=16, epochs=5, verbose=0,
                  callbacks=[grow, cb, ChooseLater()])


def _Crash():
    return CrashAtEpoch(2)


def _resumable(directory=None, crash=False):
    keras.utils.set_random_seed(7)
    x, y = _arrays(48, seed=3)
    bundle = data.from_arrays((x, y.argmax(-1)), (x[:16], y[:16].argmax(-1)), batch_size=16,
                              seed=3)
    model = _resnet()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    cb = ProgressiveFreezing(0.15, epochs=5, interval=1, start=1)
    callbacks = [cb]
    if directory is not None:
        callbacks.append(ControllerCheckpoint(directory))
    if crash:
        callbacks.append(_Crash())
    return bundle, model, cb, callbacks


# Slow: the "combined" kill -9 scenario (test_kill9_methods.py) kills a run with frozen
# blocks mid-epoch and checks its frozen set and weights after the restart.
@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_weights_and_frozen_set(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        bundle, reference, ref_cb, cbs = _resumable()
        reference.fit(bundle.train, epochs=5, verbose=0, callbacks=cbs)

        directory = str(tmp_path / "ckpt")
        bundle, crashed, cb, cbs = _resumable(directory, crash=True)
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(bundle.train, epochs=5, verbose=0, callbacks=cbs)
        assert cb.frozen_blocks == 2

        bundle, resumed, cb, cbs = _resumable(directory)
        history = resumed.fit(bundle.train, epochs=5, verbose=0, callbacks=cbs)
        assert len(history.history["loss"]) == 2
        assert cb.events == ref_cb.events and cb.frozen_blocks == 3
        ref_ctrl, ctrl = TrainingController.of(reference), TrainingController.of(resumed)
        assert ctrl.frozen == ref_ctrl.frozen
        assert ctrl.lr_multipliers == ref_ctrl.lr_multipliers
        assert_weights_match(resumed, reference, tol=0.0)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def _residual_net():
    """Three residual blocks without BatchNorm (per-replica BN statistics would
    make a 2-replica run differ from a 1-device run)."""
    init = keras.initializers.GlorotUniform(seed=0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="stem", kernel_initializer=init)(inp)
    for i in range(3):
        r = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"b{i}_c1",
                                kernel_initializer=init)(h)
        r = keras.layers.Conv2D(4, 3, padding="same", name=f"b{i}_c2", kernel_initializer=init)(r)
        h = keras.layers.Add(name=f"b{i}_add")([h, r])
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10, name="head", kernel_initializer=init)(h))


def test_mirrored_strategy_same_frozen_set_and_weights(mirrored_strategy):
    x, y = _arrays(32)

    def run(strategy):
        keras.utils.set_random_seed(5)
        with strategy.scope():
            model = _residual_net()
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
        cb = ProgressiveFreezing(0.15, epochs=4, interval=1, start=1)
        model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False, callbacks=[cb])
        return model, cb

    single, single_cb = run(tf.distribute.get_strategy())
    mirrored, mirrored_cb = run(mirrored_strategy)
    assert mirrored_cb.plan.groups[0] == ("stem", "b0_c1", "b0_c2")
    assert mirrored_cb.events == single_cb.events and mirrored_cb.frozen_blocks >= 1
    assert (TrainingController.of(mirrored).frozen == TrainingController.of(single).frozen)
    assert_weights_match(mirrored, single, tol=1e-5)


def test_bench_methods_registered_and_reach_their_target_in_short_runs():
    import types
    from kgrow import bench
    from kgrow.methods.progressive_freezing import bench as freeze_bench
    assert {"freeze", "freeze_15", "freeze_5"} <= set(bench.available_methods())
    context = types.SimpleNamespace(train=types.SimpleNamespace(epochs=5),
                                    build_model=lambda: _resnet(0.5))
    model, (cb,) = freeze_bench.freeze(None, context)
    assert isinstance(cb, ProgressiveFreezing) and cb.target_saving == 0.25
    assert cb.blocks_per_event == "auto"
    with pytest.raises(ValueError, match="unreachable"):  # one block per epoch: too few
        freeze_plan(model, 0.25, 5, cb.interval, blocks_per_event=1)
    plan = freeze_plan(model, 0.25, 5, cb.interval, blocks_per_event="auto")
    assert plan.blocks_per_event == 2 and plan.saving >= 0.25
    _, (cb15,) = freeze_bench.freeze_15(None, context)
    plan15 = freeze_plan(model, 0.15, 5, cb15.interval, blocks_per_event="auto")
    assert plan15.blocks_per_event == 1 and plan15.saving >= 0.15
