"""Every controller component (frozen set, optimizer, EMAs, LR groups, masks,
LR scales) on one model, through the events of issue 14's "done when":
width and depth growth (state where the transfer plan says), reset on
request, `ControllerCheckpoint`, `EarlyStopping(restore_best_weights=True)`
across a growth, and MirroredStrategy. (Keras' BackupAndRestore and the
per-entry LR scales' exactness are in test_controller_components.py.)"""
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow import models, surgery
from kgrow.controller import ControllerCheckpoint, LRScales, Masks, TrainingController
from kgrow.controller.optimizer import optimizer_state, optimizer_step

from ctrl_helpers import mirrored_strategy
from testing_helpers import assert_same_state, component_states

COMPONENTS = ("frozen", "optimizer", "ema", "lr_groups", "masks", "lr_scales")
FROZEN = "stage3_block1_conv1"   # in a stage that depth growth lengthens
GROUP = r"^stage3_"              # LR group rule: inserted stage-3 blocks must join it
GROWTHS = {
    "width": lambda m: surgery.scale_width(m, 2.0, initializer="random"),
    "depth": lambda m: surgery.set_depth(m, [3, 3, 5]),
}


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8)
    return kgrow.data.from_arrays((x, rng.integers(0, 3, n)), batch_size=8, num_classes=3)


def _kernels(model):
    return [v for v in model.weights if v.path.endswith("/kernel")]


def _controlled(strategy=None):
    """ResNet-20 (width 1/4, 8x8 inputs) holding state of every component kind."""
    scope = strategy.scope() if strategy is not None else tf.distribute.get_strategy().scope()
    with scope:
        model = models.resnet_cifar(20, (8, 8, 1), 3, width=0.25)
        model.compile(keras.optimizers.SGD(0.02, momentum=0.9), "categorical_crossentropy")
    ctrl = TrainingController.of(model)
    rng = np.random.default_rng(0)
    ctrl.freeze(FROZEN)
    ctrl.add_ema("ema", decay=0.5)
    ctrl.set_lr_multipliers({GROUP: 0.5})
    Masks.of(ctrl).set({v.path: rng.random(tuple(v.shape)) < 0.5 for v in _kernels(model)})
    LRScales.of(ctrl).set({v.path: rng.uniform(0.1, 2.0, tuple(v.shape))
                           for v in _kernels(model)})
    return model, ctrl


def _distributed(v):
    """The tf.distribute value behind a (Keras) variable, or None."""
    for candidate in (v, getattr(v, "value", None)):
        if isinstance(candidate, tf.distribute.DistributedValues):
            return candidate
    return None


def _slots(model):
    (level,) = optimizer_state(model.optimizer)["levels"]
    return level["slots"]["momentums"]


def _weights(model):
    return {v.path: v.numpy() for v in model.weights}


def _layer_of(path):
    return path.rsplit("/", 1)[0]


def _assert_masked_zero(model, ctrl):
    weights = _weights(model)
    for path, mask in ctrl.component("masks").get().items():
        assert np.all(weights[path][~mask] == 0.0), path


def _grow(model, ctrl, growth, reset=()):
    old = {"weights": _weights(model), "slots": _slots(model),
           "ema": ctrl.ema("ema").values(), "masks": ctrl.component("masks").get(),
           "scales": ctrl.component("lr_scales").get(),
           "frozen": set(ctrl.frozen), "iterations": int(model.optimizer.iterations.numpy())}
    with ctrl.scope():
        result = GROWTHS[growth](model)
    ctrl.replace_model(result, reset=reset)
    return result.plan, old


def _assert_carried(model, ctrl, plan, old, growth):
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    weights = _weights(model)
    sources = {p: plan[p].source for p in shapes}
    if growth == "depth":
        assert any("_ins" in p for p in shapes)
    else:
        assert any(shapes[p] != old["weights"][p].shape for p in shapes if p in old["weights"])
    # frozen: a layer is frozen exactly when the layer its weights come from was
    frozen = set(ctrl.frozen)
    for layer in {_layer_of(p) for p in shapes if p.endswith("/kernel")}:
        source = sources[layer + "/kernel"]
        assert (layer in frozen) == (source is not None and _layer_of(source) in old["frozen"])
    # optimizer: momentum gathered through the plan, 0 for new entries; iterations go on
    slots = _slots(model)
    for p, slot in slots.items():
        t = plan[p]
        expected = t.gather(old["slots"].get(t.source), shapes[p], fill=0.0)
        np.testing.assert_array_equal(slot, expected, err_msg=p)
    assert int(model.optimizer.iterations.numpy()) == old["iterations"]
    # EMA: shadows gathered through the plan, new entries start at the new weights
    for p, shadow in ctrl.ema("ema").values().items():
        t = plan[p]
        if t.source is None:
            np.testing.assert_array_equal(shadow, weights[p], err_msg=p)
            continue
        expected = np.where(t.new_mask(shapes[p]), weights[p],
                            t.gather(old["ema"][t.source], shapes[p]))
        np.testing.assert_array_equal(shadow, expected, err_msg=p)
    # LR groups: the rule now covers every matching variable, inserted ones included
    groups = ctrl.component("lr_groups")
    matching = {p for p in shapes if re.search(GROUP, p)}
    assert set(groups.assignment) >= {p for p in matching if p in {
        v.path for v in model.trainable_weights}}
    assert groups.get_state() == [[GROUP, 0.5]]
    # masks and LR scales: gathered through the plan
    for name, key, fill in (("masks", "masks", 1), ("lr_scales", "scales", 1.0)):
        got = ctrl.component(name).get()
        expected = {p: plan[p].gather(old[key][plan[p].source], shapes[p], fill=fill)
                    for p in shapes if plan[p].source in old[key]}
        assert sorted(got) == sorted(expected), name
        for p in expected:
            np.testing.assert_array_equal(np.asarray(got[p], dtype=float),
                                          np.asarray(expected[p], dtype=float), err_msg=p)
    _assert_masked_zero(model, ctrl)


@pytest.mark.parametrize("growth", sorted(GROWTHS))
@pytest.mark.parametrize("kind", ["default", "mirrored"])
def test_every_component_follows_the_plan_and_keeps_acting(growth, kind):
    strategy = mirrored_strategy() if kind == "mirrored" else None
    model, ctrl = _controlled(strategy)
    data = _data()
    model.fit(data.train, epochs=1, verbose=0)
    plan, old = _grow(model, ctrl, growth)
    _assert_carried(model, ctrl, plan, old, growth)
    frozen_before = {v.path: v.numpy() for v in model.weights
                     if _layer_of(v.path) in set(ctrl.frozen)}
    assert frozen_before
    ema_before = ctrl.ema("ema").values()
    model.fit(data.train, epochs=1, verbose=0)  # everything acts on the grown model
    for p, value in frozen_before.items():
        np.testing.assert_array_equal(_weights(model)[p], value, err_msg=p)
    _assert_masked_zero(model, ctrl)
    ema_after = ctrl.ema("ema").values()
    assert any(not np.array_equal(ema_before[p], ema_after[p]) for p in ema_after)
    if kind == "mirrored":  # replicas agree (BN moving statistics are per replica)
        trained = {v.path for v in model.trainable_weights}
        shadows = [s for p, s in ctrl.ema("ema").shadow_variables().items() if p in trained]
        distributed = [_distributed(v) for v in model.trainable_weights + shadows]
        assert shadows and all(d is not None for d in distributed)
        for d in distributed:
            values = [t.numpy() for t in d.values]
            np.testing.assert_array_equal(values[0], values[1])


@pytest.mark.parametrize("name", COMPONENTS)
def test_reset_on_request_resets_that_component_only(name):
    model, ctrl = _controlled()
    data = _data()
    model.fit(data.train, epochs=1, verbose=0)
    plan, old = _grow(model, ctrl, "width", reset=(name,))
    weights = _weights(model)
    state = {n: c.get_state() for n, c in ctrl.components.items()}
    if name == "frozen":
        assert ctrl.frozen == [] and all(layer.trainable for layer in model.layers)
    elif name == "optimizer":
        assert all(not np.any(s) for s in _slots(model).values())
        # a new optimizer's count, the run's step carried for the LR schedule
        assert int(model.optimizer.iterations.numpy()) == 0 < old["iterations"]
        assert optimizer_step(model.optimizer) == old["iterations"]
    elif name == "ema":
        for p, shadow in ctrl.ema("ema").values().items():
            np.testing.assert_array_equal(shadow, weights[p])
    elif name == "lr_groups":
        assert state["lr_groups"] == [] and ctrl.component("lr_groups").assignment == {}
    else:
        assert ctrl.component(name).get() == {}
    # the others were carried as usual
    if name != "frozen":
        assert ctrl.frozen == [FROZEN]
    if name != "optimizer":
        assert any(np.any(s) for s in _slots(model).values())
    if name != "lr_groups":
        assert state["lr_groups"] == [[GROUP, 0.5]]
    for other in ("masks", "lr_scales"):
        if name != other:
            assert len(ctrl.component(other).get()) == len(_kernels(model))
    model.fit(data.train, epochs=1, verbose=0)  # and training goes on






class _GrowAt(keras.callbacks.Callback):
    def __init__(self, growth, epoch):
        super().__init__()
        self.growth, self.epoch = growth, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            ctrl = TrainingController.of(self.model)
            with ctrl.scope():
                ctrl.replace_model(GROWTHS[self.growth](self.model))


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


@pytest.mark.parametrize("growth", sorted(GROWTHS))
def test_every_component_resumes_through_controller_checkpoint(tmp_path, growth):
    saved = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved.clear()
            saved.update(component_states(TrainingController.of(self.model)))

    model, ctrl = _controlled()
    with pytest.raises(RuntimeError, match="simulated kill"):
        model.fit(_data().train, epochs=3, verbose=0, callbacks=[
            _GrowAt(growth, 1), Record(), ControllerCheckpoint(str(tmp_path)), _Crash()])
    fresh, _ = _controlled()  # the script run again: small model, same setup calls
    seen = {}

    class Check(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not seen:
                seen.update(component_states(TrainingController.of(self.model)))
                seen["epoch"] = epoch

    fresh.fit(_data().train, epochs=3, verbose=0, callbacks=[
        _GrowAt(growth, 1), ControllerCheckpoint(str(tmp_path)), Check()])
    assert seen.pop("epoch") == 2
    assert_same_state(saved, seen)
    _assert_masked_zero(fresh, TrainingController.of(fresh))


def test_every_component_survives_early_stopping_across_growth():
    model, ctrl = _controlled()
    data = _data()
    arch = model.to_json()
    before = None

    class Score(keras.callbacks.Callback):  # makes epoch 0 (the small model) the best
        def on_epoch_end(self, epoch, logs=None):
            nonlocal before
            logs["score"] = -epoch
            if epoch == 0:
                before = component_states(ctrl)

    stop = keras.callbacks.EarlyStopping(monitor="score", mode="max", patience=5,
                                         restore_best_weights=True)
    model.fit(data.train, epochs=3, verbose=0,
              callbacks=[_GrowAt("depth", 1), Score(), stop])
    assert stop.best_epoch == 0 and model.to_json() == arch
    after = component_states(ctrl)
    for name in ("frozen", "lr_groups", "masks", "lr_scales"):
        assert_same_state(before[name], after[name], name)  # as they were with those weights
    # The optimizer restarts on the restored variables as a new one, its LR schedule
    # at the run's step; the EMA restarts as a copy of the restored weights.
    assert int(model.optimizer.iterations.numpy()) == 0
    assert optimizer_step(model.optimizer) == 3 * data.steps_per_epoch
    assert all(not np.any(s) for s in _slots(model).values())
    weights = _weights(model)
    for p, shadow in ctrl.ema("ema").values().items():
        np.testing.assert_array_equal(shadow, weights[p])
    frozen = {p: w for p, w in weights.items() if _layer_of(p) == FROZEN}
    assert frozen
    model.fit(data.train, epochs=1, verbose=0)
    _assert_masked_zero(model, ctrl)
    for p, value in frozen.items():
        np.testing.assert_array_equal(_weights(model)[p], value, err_msg=p)
    assert any(np.any(s) for s in _slots(model).values())
