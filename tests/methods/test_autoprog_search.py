"""AutoProg's elastic supernet, per-stage search, weight recycling and resume (a real
kill -9 of the resumed run: test_kill9_methods.py, slow)."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kgrow
from kgrow import models
from kgrow.callbacks import Growth
from kgrow.controller import ControllerCheckpoint, TrainingController
from kgrow.methods.autoprog import search as search_lib
from kgrow.methods.autoprog.search_callback import AutoProg
from kgrow.methods.autoprog.supernet import (build_supernet, extract_subnetwork,
                                             set_subnetwork)
from kgrow.schedules import GrowthSchedule
from kgrow.surgery import interpolation_mapping, set_depth
from testing_helpers import assert_weights_match


def _vit(depth=4, image=16):
    return models.vit((image, image, 3), 3, depth=depth, dim=16, heads=2, patch_size=4)


def _images(n=4, image=16, seed=0):
    return np.random.default_rng(seed).random((n, image, image, 3)).astype("float32")


# ------------------------------------------------------------------ supernet
@pytest.mark.parametrize("gating", ["cond", "multiply"])
def test_supernet_with_optional_blocks_off_is_the_pre_growth_model(gating):
    small = _vit(depth=2, image=8)  # the stage's current model: 2 blocks at 8x8
    grown = set_depth(small, 4, mapping=interpolation_mapping, source="neighbour")
    mapping = grown.info["mappings"]["0"]
    always_on = [p for p, j in enumerate(mapping) if j not in mapping[:p]]
    result = build_supernet(grown.model, always_on, gating=gating)
    supernet, info = result.model, result.info["supernet"]
    assert info["base_depth"] == 2 and info["depth"] == 4 and len(info["gates"]) == 2
    x = _images(image=8)
    set_subnetwork(supernet, info, depth=2, image_size=(8, 8))
    np.testing.assert_allclose(supernet(x, training=False), small(x, training=False),
                               atol=1e-5)
    # Larger input, resized in the graph to the sub-network's resolution.
    x16 = _images(image=16)
    set_subnetwork(supernet, info, depth=2, image_size=(8, 8))
    x8 = tf.image.resize(x16, (8, 8), method="bilinear").numpy()
    np.testing.assert_allclose(supernet(x16, training=False), small(x8, training=False),
                               atol=1e-5)
    # Depth 4 switches every block on: the grown model's function.
    set_subnetwork(supernet, info, depth=4, image_size=None)
    np.testing.assert_allclose(supernet(x, training=False), grown.model(x, training=False),
                               atol=1e-5)


def test_weight_recycling_extracts_the_sub_network_the_supernet_computes():
    model = _vit(depth=4, image=16)
    result = build_supernet(model, [0, 2])
    supernet, info = result.model, result.info["supernet"]
    x = _images(image=16)
    set_subnetwork(supernet, info, depth=3, image_size=(12, 12))
    expected = supernet(x, training=False)
    sub = extract_subnetwork(supernet, info, depth=3, image_size=(12, 12))
    names = [layer.name for layer in sub.model.layers]
    # Depth 3 switches on the last optional block (the paper fills from the end).
    assert [n for n in names if n.endswith("_add2")] == ["block0_add2", "block2_add2",
                                                          "block3_add2"]
    assert sub.model.get_layer("pos_embed").grid == (3, 3)
    assert type(sub.model.get_layer("pos_embed")) is models.PositionEmbedding
    x12 = tf.image.resize(x, (12, 12), method="bilinear").numpy()
    np.testing.assert_allclose(sub.model(x12, training=False), expected, atol=1e-5)
    # Every recycled variable comes from the supernet's variable of the same path.
    paths = {v.path for v in supernet.weights}
    assert all(sub.plan[v.path].source in paths for v in sub.model.weights)
    assert sub.plan["pos_embed/embeddings"].resample is not None
    # The supernet survives a JSON round trip (checkpoints) with the same paths.
    again = keras.models.model_from_json(supernet.to_json())
    assert sorted(v.path for v in again.weights) == sorted(paths)


# ------------------------------------------------------------------ search (pure)
def test_candidate_sets_follow_the_paper():
    assert search_lib.candidate_values(224, start=0.5, multiple=16)[0] == 112
    first = search_lib.stage_candidates([8, 12, 16, 20, 24], [2, 3, 4, 5, 6])
    assert {(c["resolution"], c["depth"]) for c in first} == {
        (r, d) for r in (8, 16, 24) for d in (2, 4, 6)}
    later = search_lib.stage_candidates([8, 12, 16, 20, 24], [2, 3, 4, 5, 6],
                                        current={"resolution": 12, "depth": 5})
    assert {(c["resolution"], c["depth"]) for c in later} == {
        (r, d) for r in (12, 16, 20, 24) for d in (5, 6)}


def test_choose_picks_the_lowest_score_on_a_constructed_case():
    losses = [2.0, 1.2, 1.0, 0.99]
    times = [1.0, 2.0, 4.0, 8.0]
    # With w = 0 the lowest loss wins; with w = 1 loss * time.
    assert search_lib.choose(losses, times, w=0.0)["index"] == 3
    assert search_lib.choose(losses, times, w=1.0)["index"] == 0
    # w = 0.25: scores 2.0, 1.2*2**.25=1.427, 1.0*4**.25=1.414, 0.99*8**.25=1.665.
    pick = search_lib.choose(losses, times, w=0.25)
    assert pick["index"] == 2
    assert pick["scores"] == pytest.approx([2.0, 1.2 * 2 ** .25, 4 ** .25, 0.99 * 8 ** .25])
    # "auto" fits w on log loss vs log time: here loss ~ time^-0.5 exactly,
    # so every candidate on the trend ties except the one below it.
    auto = search_lib.choose([4.0, 2.0, 0.9, 1.0], [1.0, 4.0, 16.0, 64.0], w="auto")
    assert auto["index"] == 2 and 0.3 < auto["w"] < 0.7
    with pytest.raises(ValueError, match="positive"):
        search_lib.choose([1.0], [0.0])


# ------------------------------------------------------------------ errors
def test_clear_errors_before_training():
    data = (_images(8), np.eye(3)[np.arange(8) % 3])
    # A model without an interpolatable position embedding.
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 4, strides=4)(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="interpolatable position embedding"):
        AutoProg(6, data, num_stages=2).set_model(keras.Model(inp, out))
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        AutoProg(6, data, num_stages=2, resolutions=[8, 10, 16]).set_model(_vit())
    with pytest.raises(ValueError, match="do not end at the full model"):
        AutoProg(6, data, num_stages=2, resolutions=[8, 12]).set_model(_vit())
    with pytest.raises(ValueError, match="do not end at the full model"):
        AutoProg(6, data, num_stages=2, depths=[2, 3]).set_model(_vit())
    with pytest.raises(ValueError, match="supernet_epochs"):
        AutoProg(4, data, num_stages=2, supernet_epochs=2)


# ------------------------------------------------------------------ the callback
N, BATCH, EPOCHS = 64, 16, 4


def _bundle():
    rng = np.random.default_rng(0)
    x = rng.random((N, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, N)
    x[:, :4, :4, :] += y[:, None, None, None] * 0.5
    return kgrow.data.from_arrays((x, y), (x[:8], y[:8]), batch_size=BATCH, resizable=True)


def _step_time(candidate):  # deterministic: a cost model instead of timings
    return candidate["resolution"] ** 2 * candidate["depth"]


def _run(bundle, *, extra=(), **kwargs):
    keras.utils.set_random_seed(5)
    model = _vit(depth=4, image=16)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    TrainingController.of(model).attach_selection(bundle.selection)
    search = AutoProg(EPOCHS, bundle, num_stages=2, supernet_epochs=1, depths=[2, 3, 4],
                      score_samples=32, score_batch_size=16, step_time=_step_time,
                      verbose=0, **kwargs)
    return model, search, [*extra, search]


class _ScoreTwice(keras.callbacks.Callback):
    """Scores the candidates twice just before AutoProg does, and can inject losses."""

    def __init__(self, losses=None):
        super().__init__()
        self.search, self.losses, self.seen = None, losses, []

    def on_epoch_begin(self, epoch, logs=None):
        s = self.search.search
        if s is not None and epoch == s["score_epoch"]:
            self.seen = [self.search.candidate_losses()[0], self.search.candidate_losses()[0]]
            if self.losses is not None:
                self.search.candidate_losses = lambda: (list(self.losses),
                                                        [1.0] * len(self.losses))


def test_autoprog_searches_recycles_logs_and_its_schedule_replays(tmp_path):
    bundle = _bundle()
    # Injected losses: with w=1 and step time r^2 * d the argmin is known.
    candidates = search_lib.stage_candidates([8, 12, 16], [2, 3, 4])
    times = [_step_time(c) for c in candidates]
    losses = [3.0 - 0.1 * i for i in range(len(candidates))]
    losses[4] = 0.5  # (12, 3): by far the lowest loss x time
    expected = int(np.argmin(np.asarray(losses) * np.asarray(times)))
    assert expected == 4
    probe = _ScoreTwice(losses)
    path = tmp_path / "schedule.json"
    model, search, callbacks = _run(bundle, extra=[probe], w=1.0, schedule_path=str(path))
    probe.search = search
    ctrl = TrainingController.of(model)
    traces_before = ctrl.retrace_count
    history = model.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=callbacks)

    # Scoring is deterministic (EMA weights, fixed subset, no augmentation).
    # The scoring EMA warms up (restarted at the supernet, counted since).
    ema = ctrl.ema(search.EMA_NAME)
    assert ema.warmup and 0 < ema.updates <= EPOCHS * bundle.steps_per_epoch
    first, second = probe.seen
    assert len(first) == 9 and first == second and np.all(np.isfinite(first))
    # The lowest score won, and the recycled model has its sizes.
    chosen = [e for e in search.events if e["kind"] == "chosen"]
    assert chosen[0]["choice"] == {"resolution": 12, "depth": 3}
    assert chosen[0]["scores"] == pytest.approx(list(np.asarray(losses) * times / min(times)))
    assert [c["epoch"] for c in chosen] == [1, 2]
    # One trace per architecture: supernet, recycled sub-network, full model.
    assert ctrl.retrace_count - traces_before <= 4
    assert model.get_layer("pos_embed").grid == (4, 4)
    assert len([l for l in model.layers if l.name.endswith("_add2")]) == 4
    logs = history.history
    assert logs["autoprog/supernet"] == [1.0, 0.0, 0.0, 0.0]
    assert logs["autoprog/resolution"][1:] == [12.0, 16.0, 16.0]
    assert logs["autoprog/depth"][1:] == [3.0, 4.0, 4.0]
    assert logs["autoprog/search_s"][-1] > 0
    # The searched schedule: events, file, and a plain Growth replays it.
    schedule = search.searched_schedule()
    assert [s.to_dict() for s in schedule.stages] == [
        {"epoch": 0, "resolution": 0.75, "depth": 0.75},
        {"epoch": 2, "resolution": 1.0, "depth": 1.0}]
    assert search.events[-1]["kind"] == "searched_schedule"
    assert GrowthSchedule.from_dict(search.events[-1]["schedule"]) == schedule
    assert GrowthSchedule.from_json(path.read_text()) == schedule
    json.dumps(search.events)  # results.json material

    keras.utils.set_random_seed(5)
    replay_model = _vit(depth=4, image=16)
    replay_model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    bundle = _bundle()
    TrainingController.of(replay_model).attach_selection(bundle.selection)
    replay = Growth(GrowthSchedule.from_json(path.read_text()), depth_source="ema",
                    verbose=0)
    replay_model.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=[replay])
    assert [(e["epoch"], e["sizes"]["resolution"], e["sizes"]["depth"], e["image_size"])
            for e in replay.events] == [(0, 0.75, 0.75, [12, 12]), (2, 1.0, 1.0, [16, 16])]


def test_resume_after_a_kill_while_scoring_equals_the_uninterrupted_run(tmp_path):
    """Killed while it scores the candidates after the supernet epoch, the same
    calls again score from the checkpoint and end where a run never interrupted
    ends: weights, choice and searched schedule. A real SIGKILL of this run:
    test_kill9_methods.py (slow)."""
    tf.config.experimental.enable_op_determinism()
    try:
        def run(directory=None):
            bundle = _bundle()
            model, search, callbacks = _run(bundle)
            if directory is not None:
                callbacks.append(ControllerCheckpoint(directory))
            return model, search, callbacks, bundle

        reference, want, callbacks, bundle = run()
        reference.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=callbacks)
        directory = str(tmp_path / "ckpt")
        crashed, search, callbacks, bundle = run(directory)

        def killed():
            raise RuntimeError("simulated kill")

        search.candidate_losses = killed
        with pytest.raises(RuntimeError, match="simulated kill"):
            crashed.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=callbacks)
        assert search.chosen == []
        resumed, got, callbacks, bundle = run(directory)
        history = resumed.fit(bundle.train, epochs=EPOCHS, verbose=0, callbacks=callbacks)
        assert len(history.history["loss"]) == EPOCHS - 1  # the supernet epoch was saved
        assert got.chosen == want.chosen and want.chosen
        assert got.searched_schedule() == want.searched_schedule()
        assert_weights_match(resumed, reference)
    finally:
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


def test_bench_factory_needs_resizable_data_and_sets_up_autoprog():
    from kgrow.bench.registry import MethodContext
    from kgrow.methods.autoprog.search_callback import bench_autoprog
    from kgrow.training import TrainConfig

    def context(resizable):
        rng = np.random.default_rng(0)
        x, y = rng.random((32, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 32)
        bundle = kgrow.data.from_arrays((x, y), (x[:8], y[:8]), batch_size=8,
                                        resizable=resizable)
        return MethodContext(model_name="vit", model_kwargs={}, input_shape=(16, 16, 3),
                             num_classes=3, train=TrainConfig(epochs=12), data=bundle,
                             steps_per_epoch=4)

    assert bench_autoprog.data_options == {"resizable": True}
    with pytest.raises(ValueError, match="resizable"):
        bench_autoprog(lambda **kw: _vit(), context(False))
    ctx = context(True)
    model, callbacks = bench_autoprog(lambda **kw: _vit(), ctx)
    (search,) = callbacks
    assert isinstance(search, AutoProg) and len(search.schedule.stages) == 4
    assert search.supernet_epochs == 1  # 3-epoch stages: 2 of them for the winner
    assert TrainingController.of(model).selection is ctx.data.selection
    assert search.reset_optimizer  # the paper's
    from kgrow.bench.registry import get_method
    carry = get_method("autoprog_carry")
    assert carry.data_options == {"resizable": True}
    _, (search,) = carry(lambda **kw: _vit(), context(True))
    assert not search.reset_optimizer and len(search.schedule.stages) == 4


def test_scoring_subset_follows_the_compute_budget():
    x, y = np.zeros((6000, 16, 16, 3), "float32"), np.zeros(6000, "int64")
    search = AutoProg(6, (x, y), num_stages=2, supernet_epochs=1, score_batch_size=16,
                      verbose=0)
    search.set_model(_vit(depth=4, image=16))
    assert len(search.candidates(0)) == 9  # resolutions 8, 12, 16 x depths 2, 3, 4
    # 1% of 6 epochs x 6000 samples x 3 forward passes, over one searched stage of 9.
    assert search._score_count() == int(0.01 * 3 * 6 * 6000 / 9) == 120
    search.score_budget = 1.0  # then the paper's 4% of the data caps it
    assert search._score_count() == 240
    search.score_budget = 1e-6  # and one scoring batch is the least
    assert search._score_count() == 16
    with pytest.raises(ValueError, match="score_budget"):
        AutoProg(6, (x, y), num_stages=2, supernet_epochs=1, score_budget=0.0)
