"""AutoProg's manual progressive learning (Prog): schedule, position-embedding
interpolation, depth operators, MoGrow, adaptive regularization, replay, resume."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow.callbacks import FullSize
from kgrow.controller import ControllerCheckpoint, TrainingController, optimizer_step
from kgrow.methods.autoprog import (OPERATORS, Prog, check_vit_like, growth_operator,
                                    mogrow_ema_decay, prog_schedule, regularization_scales)
from kgrow.models import resize_vit
from kgrow.schedules import GrowthSchedule, Stage
from kgrow.surgery import find_blocks, interpolation_mapping, set_depth
from testing_helpers import CrashAtEpoch, assert_weights_match


def _vit(size=8, depth=4, drop_path=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    return kgrow.models.get("vit", (size, size, 1), 3, patch_size=4, dim=16, heads=2,
                            depth=depth, mlp_ratio=2.0, drop_path=drop_path)


def _bundle(size=8, n=64, augment=None, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 255, (n, size, size, 1)).astype("uint8")
    y = np.arange(n) % 3
    return kgrow.data.from_arrays((x, y), (x[:16], y[:16]), batch_size=16, resizable=True,
                                  augment=augment, seed=seed)


def _compile(model, lr=1e-3):
    model.compile(keras.optimizers.AdamW(lr), "categorical_crossentropy")
    return model


def _block_mlp(model):
    """Per block (in order), the first MLP kernel: identifies where a block came from."""
    out = []
    for block in find_blocks(model):
        name = next(n for n in block.layers if n.endswith("_mlp1"))
        out.append(model.get_layer(name).kernel.numpy())
    return out


# -- the schedule ----------------------------------------------------------------------------
def test_prog_schedule_is_the_papers_uniform_linear_schedule():
    s = prog_schedule(100, full_resolution=224, patch_size=16, full_depth=18)
    full = FullSize({}, [18], [1], [224, 224], 16)
    assert [st.epoch for st in s.stages] == [0, 25, 50, 75]
    assert [full.resolution_at(st.resolution) for st in s.stages] == [
        [112, 112], [160, 160], [192, 192], [224, 224]]
    assert [full.depths_at(st.depth) for st in s.stages] == [[9], [12], [15], [18]]
    small = prog_schedule(6, full_resolution=28, patch_size=4, full_depth=6)
    assert [round(st.resolution * 28) for st in small.stages] == [16, 20, 24, 28]
    assert [st.epoch for st in small.stages] == [0, 1, 3, 4]
    only_depth = prog_schedule(4, 2, resolution_scale=None, full_depth=4)
    assert only_depth.quantities == ("depth",)


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_epochs=10, full_resolution=30, patch_size=16, full_depth=12), "multiple of the patch"),
    (dict(total_epochs=3, num_stages=4, full_resolution=32, patch_size=16, full_depth=4), "at least 4 epochs"),
    (dict(total_epochs=3, num_stages=0, full_resolution=32, patch_size=16, full_depth=4), "num_stages"),
    (dict(total_epochs=8, resolution_scale=0.0, full_resolution=32, patch_size=16, full_depth=4), r"\(0, 1\]"),
    (dict(total_epochs=8, full_depth=4), "full_resolution"),
    (dict(total_epochs=8, resolution_scale=None, depth_scale=None), "resolution_scale and/or"),
])
def test_prog_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prog_schedule(**kwargs)


def test_settings_errors_come_before_training():
    with pytest.raises(ValueError, match="operator must be one of"):
        Prog(operator="net2net")
    with pytest.raises(ValueError, match="at least 4 epochs"):
        Prog(epochs=2)
    cnn = kgrow.models.get("resnet20", (8, 8, 1), 3)
    with pytest.raises(ValueError, match="no kgrow PositionEmbedding"):
        check_vit_like(cnn)
    with pytest.raises(ValueError, match="no kgrow PositionEmbedding"):
        Prog(epochs=4).set_model(cnn)
    # MoGrow's half-life needs the steps per epoch, unknown for a dataset of unknown length.
    model, data = _compile(_vit()), _bundle()
    TrainingController.of(model).attach_selection(data.selection)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(data.train.filter(lambda x, y: True), epochs=4, verbose=0,
                  callbacks=[Prog(verbose=0)])
    # Resolution stages need a resizable bundle.
    fixed = kgrow.data.from_arrays((np.zeros((32, 8, 8, 1), "uint8"), np.arange(32) % 3),
                                   batch_size=16)
    with pytest.raises(ValueError, match="resizable=True"):
        _compile(_vit()).fit(fixed.train, epochs=4, verbose=0,
                             callbacks=[Prog(operator="interpolation", verbose=0)])


def test_operators_and_decay():
    assert growth_operator("stacking") == {"depth_mapping": "stack", "depth_source": "neighbour"}
    assert set(OPERATORS) == {"randinit", "stacking", "interpolation", "mogrow"}
    # The authors' 0.9996 per step on their 100-epoch ImageNet runs.
    assert mogrow_ema_decay(100, 1251) == pytest.approx(0.9996, abs=1e-9)
    assert regularization_scales(0, 4) == {"randaugment": 0.5, "drop_path": 0.0, "erasing": 0.0}
    assert regularization_scales(3, 4) == {"randaugment": 1.0, "drop_path": 1.0, "erasing": 1.0}


# -- number of patches ------------------------------------------------------------------------
def test_position_embedding_round_trip_through_a_lower_resolution_is_exact():
    model = _vit(size=16, depth=1)
    pos = model.get_layer("pos_embed").embeddings
    pos.assign(np.random.RandomState(0).normal(size=pos.shape).astype("float32"))
    x = np.random.RandomState(1).rand(4, 16, 16, 1).astype("float32")
    want = model(x).numpy()
    low = resize_vit(model, 8, keep_table=True)
    assert low.info["resampled"] == [] and low.model.get_layer("pos_embed").grid == (2, 2)
    assert low.model(x[:, ::2, ::2]).shape == (4, 3)
    back = resize_vit(low.model, 16, keep_table=True).model
    np.testing.assert_allclose(back(x).numpy(), want, atol=1e-5)
    table = pos.numpy()
    np.testing.assert_array_equal(back.get_layer("pos_embed").table().numpy(), table)
    # Resampling the weights down and up instead loses part of the table.
    lossy = resize_vit(resize_vit(model, 8).model, 16).model
    assert np.abs(lossy.get_layer("pos_embed").table().numpy() - table).max() > 0.1


def test_prog_resolution_stage_keeps_the_full_grid_table():
    """A fit through a half-resolution stage with a zero learning rate ends with
    the function of the same weights never resized."""
    model = _compile(_vit(size=16, depth=2), lr=0.0)
    pos = model.get_layer("pos_embed").embeddings
    pos.assign(np.random.RandomState(0).normal(size=pos.shape).astype("float32"))
    x = np.random.RandomState(1).rand(4, 16, 16, 1).astype("float32")
    want = model(x).numpy()
    data = _bundle(size=16, n=32)
    prog = Prog(num_stages=2, depth_scale=None, operator="interpolation", verbose=0)
    history = model.fit(data.train, epochs=2, verbose=0, callbacks=[prog])
    assert history.history["grow/resolution"] == [8.0, 16.0]
    assert model.input_shape == (None, 16, 16, 1)
    np.testing.assert_allclose(model(x).numpy(), want, atol=1e-5)


# -- depth ------------------------------------------------------------------------------------
def test_interpolation_depth_maps_9_to_18_and_through_12_15():
    assert interpolation_mapping(9, 18) == [i // 2 for i in range(18)]
    model = _vit(size=4, depth=9)
    original = _block_mlp(model)

    def sources(grown):
        return [next(i for i, w in enumerate(original) if np.array_equal(w, k))
                for k in _block_mlp(grown)]

    direct = set_depth(model, 18, mapping=interpolation_mapping).model
    assert sources(direct) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    m, chain = model, list(range(9))
    for depth in (12, 15, 18):
        old = len(chain)
        m = set_depth(m, depth, mapping=interpolation_mapping).model
        chain = [chain[i] for i in interpolation_mapping(old, depth)]
    # 9 -> 12 -> 15 -> 18 duplicates other blocks than 9 -> 18 does.
    assert chain == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6, 7, 8]
    assert sources(m) == chain
    assert interpolation_mapping(9, 12) == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8]


def test_random_depth_source_is_fresh_seeded_and_new_in_the_plan():
    model = _vit(size=4, depth=2)
    a = set_depth(model, 3, mapping=interpolation_mapping, source="random", seed=5)
    b = set_depth(model, 3, mapping=interpolation_mapping, source="random", seed=5)
    c = set_depth(model, 3, mapping=interpolation_mapping, source="random", seed=6)
    new = [p for p, t in a.plan.items() if t.source is None]
    assert new and all("_ins" in p for p in new)
    wa, wb, wc = ({v.path: v.numpy() for v in r.model.weights} for r in (a, b, c))
    assert all(np.array_equal(wa[p], wb[p]) for p in wa)
    assert any(not np.array_equal(wa[p], wc[p]) for p in new)
    old = _block_mlp(model)
    assert not any(np.allclose(_block_mlp(a.model)[1], w) for w in old)
    with pytest.raises(ValueError, match="takes no donor"):
        set_depth(model, 3, source="random", donor={})


class _Snapshot(keras.callbacks.Callback):
    """Records the EMA and the weights at the end of `epoch`, and the weights at
    the start of the next (after the growth, which the controller runs first)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            ctrl = TrainingController.of(self.model)
            self.ema = ctrl.ema("mogrow").values()
            self.online = {v.path: v.numpy() for v in self.model.weights}
            self.blocks_before = [[n for n in b.layers] for b in find_blocks(self.model)]

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch + 1:
            self.grown = {v.path: v.numpy() for v in self.model.weights}
            self.blocks_after = [[n for n in b.layers] for b in find_blocks(self.model)]


def test_mogrow_loads_the_grown_model_from_the_momentum_network():
    model, data = _compile(_vit(depth=4)), _bundle()
    snap = _Snapshot(0)
    prog = Prog(num_stages=2, resolution_scale=None, ema_half_life_epochs=1.0,
                steps_per_epoch=data.steps_per_epoch, verbose=0)
    model.fit(data.train, epochs=2, verbose=0, callbacks=[prog, snap])
    assert len(snap.blocks_before) == 2 and len(snap.blocks_after) == 4
    for new, old in enumerate(interpolation_mapping(2, 4)):
        for new_layer, old_layer in zip(snap.blocks_after[new], snap.blocks_before[old]):
            for path, value in snap.grown.items():
                if not path.startswith(new_layer + "/"):
                    continue
                source = old_layer + path[len(new_layer):]
                np.testing.assert_array_equal(value, snap.ema[source])
                if path.endswith("kernel"):  # biases such as the key's get no gradient
                    assert not np.allclose(value, snap.online[source], atol=1e-7), path
    np.testing.assert_array_equal(snap.grown["head/kernel"], snap.ema["head/kernel"])
    assert prog.events[-1]["loaded_from"] == "ema"


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_each_operator_runs_a_two_stage_fit(operator):
    model, data = _compile(_vit(depth=2)), _bundle(n=32)
    before = _block_mlp(model)
    # The schedule comes through its JSON, the replay format.
    schedule = prog_schedule(2, 2, full_resolution=8, patch_size=4, full_depth=2)
    prog = Prog(schedule=schedule.to_json(), operator=operator,
                steps_per_epoch=data.steps_per_epoch, verbose=0)
    assert prog.schedule == schedule
    history = model.fit(data.train, epochs=2, verbose=0, callbacks=[prog])
    assert history.history["grow/depth"] == [1.0, 2.0]
    assert history.history["grow/resolution"] == [4.0, 8.0]
    assert [e["sizes"] for e in prog.events] == [s.to_dict() for s in schedule.stages]
    assert np.all(np.isfinite(history.history["loss"]))
    # The optimizer was rebuilt at the growth as a new one (moments and count reset,
    # the paper's "new AdamW"); the LR schedule kept the run's step.
    assert int(model.optimizer.iterations.numpy()) == data.steps_per_epoch
    assert optimizer_step(model.optimizer) == 2 * data.steps_per_epoch
    after = _block_mlp(model)
    assert len(after) == 2 and model.input_shape == (None, 8, 8, 1)
    if operator == "randinit":  # the new block is fresh: no old block's weights
        assert not any(np.allclose(after[1], w, atol=1e-3) for w in before)


def test_adaptive_regularization_reaches_the_pipeline_and_the_layers():
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                rates = [float(layer.rate) for layer in self.model.layers
                         if isinstance(layer, kgrow.models.DropPath)]
                seen.append((TrainingController.of(self.model).selection
                             .current_augment_scale(), max(rates), len(rates) // 2))

    model = _compile(_vit(size=8, depth=4, drop_path=0.2))
    data = _bundle(size=8, n=32)
    # Stage 2 keeps the depth of stage 1: its stochastic depth still ramps.
    schedule = GrowthSchedule([Stage(0, resolution=0.5, depth=0.5),
                               Stage(1, resolution=0.75, depth=1.0),
                               Stage(2, resolution=1.0, depth=1.0)])
    prog = Prog(schedule=schedule, operator="interpolation", adaptive_regularization=True,
                verbose=0)
    history = model.fit(data.train, epochs=3, verbose=0, callbacks=[prog, Record()])
    assert [s for s, _, _ in seen] == [{"randaugment": 0.5, "erasing": 0.0},
                                       {"randaugment": 0.75, "erasing": 0.5},
                                       {"randaugment": 1.0, "erasing": 1.0}]
    assert [r for _, r, _ in seen] == pytest.approx([0.0, 0.1, 0.2])
    assert [d for _, _, d in seen] == [2, 4, 4]
    assert history.history["prog/drop_path_scale"] == [0.0, 0.5, 1.0]


def test_augment_scale_changes_the_training_images():
    from kgrow.data.augment import AugmentConfig
    data = _bundle(n=16, augment=AugmentConfig(erasing_prob=1.0, randaugment_magnitude=9.0,
                                               randaugment_prob=1.0))

    def first_batch(**scales):
        data.selection.set_augment_scale(**scales)
        data.selection.set_epoch(0)
        return next(iter(data.train))[0].numpy()

    full = first_batch(randaugment=1.0, erasing=1.0)
    np.testing.assert_array_equal(first_batch(randaugment=1.0, erasing=1.0), full)
    no_erasing = first_batch(randaugment=1.0, erasing=0.0)
    weaker = first_batch(randaugment=0.2, erasing=0.0)
    assert not np.allclose(no_erasing, full) and not np.allclose(weaker, no_erasing)
    assert data.selection.get_state()["augment_scale"] == pytest.approx([0.2, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        data.selection.set_augment_scale(erasing=-1)


# -- resume -----------------------------------------------------------------------------------
_Crash = CrashAtEpoch


# Slow: AutoProg's resume test (test_autoprog_search.py) resumes a run whose recycled
# sub-network then grows in resolution and depth from the EMA, as Prog's does.
@pytest.mark.slow
def test_kill_and_resume_across_a_resolution_and_depth_growth(tmp_path):
    tf.config.experimental.enable_op_determinism()
    try:
        def run(directory=None, crash=None):
            model, data = _compile(_vit(size=8, depth=2, seed=3)), _bundle(n=32, seed=3)
            prog = Prog(num_stages=2, ema_half_life_epochs=0.5,
                        steps_per_epoch=data.steps_per_epoch, verbose=0)
            callbacks = [prog]
            if directory is not None:
                callbacks.append(ControllerCheckpoint(directory))
            if crash is not None:
                callbacks.append(crash)
            return model, prog, data, callbacks

        reference, _, data, cbs = run()
        reference.fit(data.train, epochs=3, verbose=0, callbacks=cbs)
        directory = str(tmp_path / "ckpt")
        crashed, prog, data, cbs = run(directory, _Crash(at=1))  # after the growth at epoch 1
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(data.train, epochs=3, verbose=0, callbacks=cbs)
        assert [e["epoch"] for e in prog.events] == [0, 1]
        resumed, prog, data, cbs = run(directory)
        history = resumed.fit(data.train, epochs=3, verbose=0, callbacks=cbs)
        assert len(history.history["loss"]) == 1
        assert resumed.input_shape == (None, 8, 8, 1)
        assert_weights_match(resumed, reference)
        ema = TrainingController.of(resumed).ema("mogrow").values()
        want = TrainingController.of(reference).ema("mogrow").values()
        assert all(np.allclose(ema[p], want[p], atol=1e-6) for p in want)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


# -- bench and recipe -------------------------------------------------------------------------
def test_bench_methods_ask_for_resizable_data():
    from kgrow.bench import registry
    names = ["prog", "prog_randinit", "prog_stacking", "prog_interpolation", "prog_mogrow",
             "prog_carry", "prog_resolution", "prog_depth"]
    assert set(names) <= set(registry.available_methods())
    assert all(registry.data_options(n) == {"resizable": True} for n in names)
    assert registry.data_options("baseline") == {}


def test_prog_bench_methods_reset_or_carry_the_optimizer_moments():
    from kgrow.bench.registry import MethodContext, get_method
    from kgrow.training import TrainConfig
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 16, 16, 1)).astype("float32"), rng.integers(0, 3, 32)
    context = MethodContext(
        model_name="vit", model_kwargs=dict(depth=4, dim=16, heads=2, patch_size=4),
        input_shape=(16, 16, 1), num_classes=3, train=TrainConfig(epochs=4),
        data=kgrow.data.from_arrays((x, y), (x[:8], y[:8]), batch_size=8, resizable=True),
        steps_per_epoch=4)
    resets, first = {}, {}
    for name in ("prog", "prog_carry", "prog_resolution", "prog_depth"):
        _, (prog,) = get_method(name)(None, context)
        resets[name] = (prog.reset_optimizer, prog.operator, len(prog.schedule.stages))
        stage = prog.schedule.stages[0]
        first[name] = tuple(v is not None and v < 1.0 for v in (stage.resolution, stage.depth))
    assert resets == {"prog": (True, "mogrow", 4), "prog_carry": (False, "mogrow", 4),
                      "prog_resolution": (True, "mogrow", 4), "prog_depth": (True, "mogrow", 4)}
    # The one-dimension ablation grows only its dimension from a smaller first stage.
    assert first == {"prog": (True, True), "prog_carry": (True, True),
                     "prog_resolution": (True, False), "prog_depth": (False, True)}


def test_recipe_reads_a_replay_schedule(tmp_path):
    import importlib.util
    import json
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "autoprog.py"
    spec = importlib.util.spec_from_file_location("autoprog_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    schedule = prog_schedule(6, full_resolution=28, patch_size=4, full_depth=6)
    (tmp_path / "s.json").write_text(schedule.to_json())
    (tmp_path / "r.json").write_text(json.dumps({"searched_schedule": schedule.to_dict()}))
    assert recipe.read_schedule(str(tmp_path / "s.json")) == schedule
    assert recipe.read_schedule(str(tmp_path / "r.json")) == schedule
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="no growth schedule"):
        recipe.read_schedule(str(tmp_path / "bad.json"))
