"""`AutoProg`: progressive learning whose schedule is searched inside the run.

Per stage (all but the last): the current model becomes an elastic supernet
(`kgrow.methods.autoprog.supernet`) holding every candidate sub-network of
the stage (`kgrow.methods.autoprog.search.stage_candidates`); it trains for
`supernet_epochs` epochs (ordinary training epochs of the run) on one
uniformly sampled sub-network per step; then every candidate is scored by
its loss on a fixed, unaugmented subset of the training data with the EMA
weights, times its step time measured during the supernet epochs to a power
`w` (`search.choose`); the lowest score wins and keeps the supernet's
weights (weight recycling) for the rest of the stage. The last stage is the
full model, grown with Growth's operator (MoGrow by default: new blocks
copied from the EMA, placed by interpolation).

The searched schedule is a `kgrow.schedules.GrowthSchedule`
(`searched_schedule()`), written to `events` and to `schedule_path`;
`Growth(schedule)` replays it.

Example:
    >>> import kgrow  # doctest: +SKIP
    >>> bundle = kgrow.data.load("fashion_mnist", image_size=32, resizable=True)  # doctest: +SKIP
    >>> model = kgrow.models.vit((32, 32, 1), 10, depth=6, dim=64, heads=4, patch_size=4)  # doctest: +SKIP
    >>> model.compile("adam", "categorical_crossentropy")  # doctest: +SKIP
    >>> kgrow.controller.TrainingController.of(model).attach_selection(bundle.selection)  # doctest: +SKIP
    >>> search = AutoProg(epochs=12, score_data=bundle)  # doctest: +SKIP
    >>> model.fit(bundle.train, epochs=12, callbacks=[search])  # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from kgrow.callbacks.growth import Growth, _depth_mapping
from kgrow.controller.replicas import agree
from kgrow.methods.autoprog import search as search_lib
from kgrow.methods.autoprog import supernet as supernet_lib
from kgrow.schedules import GrowthSchedule, Stage
from kgrow.surgery import GrowthResult

__all__ = ["AutoProg", "bench_autoprog", "bench_autoprog_carry"]

STATE_NAME = "autoprog"
# A training step costs about three forward passes (forward, and backward
# for activations and weights).
TRAIN_STEP_FORWARDS = 3


class AutoProg(Growth):
    """Searches the growth schedule (resolution, depth) stage by stage while training.

    Args:
        epochs: total epochs of the run (the stages split them equally).
        score_data: the data candidates are scored on: a
            `kgrow.data.DataBundle` (its first `score_samples` training
            samples, no augmentation) or arrays `(x, y)`; images are resized
            to the full resolution once and then, in the graph, to each
            candidate's.
        num_stages: number of stages (paper: 4); the last is the full model.
        start: smallest candidate as a fraction of the full size, when
            `resolutions` / `depths` are not given.
        resolutions: candidate image heights in pixels (multiples of the
            patch size, ending at the full height); default: every multiple
            from `start * full` up.
        depths: candidate block counts (ending at the full depth); default
            every count from `start * full` up.
        later: larger values per dimension in later stages'
            candidate sets (default `{"resolution": 3, "depth": 1}`).
        supernet_epochs: supernet epochs per stage (paper: 2).
        score_samples: size of the fixed scoring subset (default: the
            smaller of `score_fraction` of the training set and what
            `score_budget` allows, at least one batch).
        score_budget: the most the scoring passes of all searched stages
            may cost, as a fraction of the run's training compute (a
            training step counted as three forward passes, every candidate
            as the full model). The paper's 50K images per candidate are
            about 0.2% of its 300-epoch run; the same 4% of the data would
            be a tenth of a 6-epoch run, so short runs score on fewer
            samples (the same subset for every candidate, so their
            differences stay paired).
        score_fraction: the paper scores on 50K of ImageNet's 1.28M images
            (4%); scoring then costs a few percent of a supernet epoch.
        score_batch_size: batch size of the scoring passes.
        w: exponent of the step time in the score, or "auto"
            (`search.fit_exponent`).
        step_time: "measured" (median supernet step time of each candidate)
            or a callable `candidate -> seconds` (deterministic, e.g. a
            FLOPs model; measured times make the choice depend on timing
            noise).
        gating: "cond" (off blocks cost nothing) or "multiply".
        seed: seed of the per-step sub-network sampling.
        schedule_path: if given, the searched schedule's JSON is written there
            after every choice and at the end of training.
        depth_mapping, depth_source, ema_decay, ema_warmup, reset_optimizer,
        reset_ema, reset_drop_path, interpolation, verbose: as `Growth`
            (defaults: MoGrow, i.e. interpolation placement, copies from the
            EMA; moments reset). `ema_warmup` defaults to True here: the
            first search's EMA restarts from the initialization, and without
            warm-up half the scoring weights are still random one half-life
            later, which flattens the candidates' losses into noise.

    Attributes:
        events: Growth's events plus "supernet", "chosen" (with candidates,
            losses, times, scores, w) and, at the end, "searched_schedule".
        chosen: one dict per searched stage.
        search_seconds: time spent in scoring and weight recycling.
    """

    def __init__(self, epochs: int, score_data, *, num_stages: int = 4, start: float = 0.5,
                 resolutions: Optional[Sequence[int]] = None,
                 depths: Optional[Sequence[int]] = None,
                 later: Optional[Mapping[str, int]] = None, supernet_epochs: int = 2,
                 score_samples: Optional[int] = None, score_budget: float = 0.01,
                 score_fraction: float = 0.04,
                 score_batch_size: int = 128,
                 w: Union[float, str] = "auto",
                 step_time: Union[str, Callable] = "measured", gating: str = "cond",
                 seed: int = 0, schedule_path: Optional[str] = None,
                 depth_mapping="interpolation", depth_source: str = "ema",
                 ema_decay: Optional[float] = None, ema_warmup: bool = True,
                 reset_optimizer: bool = True,
                 reset_ema: bool = True, reset_drop_path=True,
                 interpolation: str = "bicubic", verbose: int = 1):
        schedule = GrowthSchedule.linear(int(epochs), num_stages=num_stages, start=start,
                                         quantity=("resolution", "depth"))
        super().__init__(schedule, depth_mapping=depth_mapping, depth_source=depth_source,
                         ema_decay=ema_decay, ema_warmup=ema_warmup,
                         reset_optimizer=reset_optimizer,
                         reset_ema=reset_ema, reset_drop_path=reset_drop_path,
                         interpolation=interpolation, verbose=verbose)
        if int(supernet_epochs) < 1:
            raise ValueError(f"supernet_epochs must be >= 1, got {supernet_epochs}")
        for a, b in zip(schedule.stages[:-1], schedule.stages[1:]):
            if b.epoch - a.epoch <= supernet_epochs:
                raise ValueError(
                    f"a searched stage lasts {b.epoch - a.epoch} epochs (epochs {a.epoch}-"
                    f"{b.epoch - 1}), not more than supernet_epochs={supernet_epochs}: the "
                    "chosen sub-network would never train. Use more epochs, fewer stages or "
                    "fewer supernet epochs.")
        if gating not in supernet_lib.GATINGS:
            raise ValueError(f"gating must be one of {supernet_lib.GATINGS}, got {gating!r}")
        if not (w == "auto" or (isinstance(w, (int, float)) and w >= 0)):
            raise ValueError(f"w must be 'auto' or a number >= 0, got {w!r}")
        if not (step_time == "measured" or callable(step_time)):
            raise ValueError(f"step_time must be 'measured' or a callable candidate -> "
                             f"seconds, got {step_time!r}")
        unknown = sorted(set(later or {}) - {"resolution", "depth"})
        if unknown:
            raise ValueError(f"later names unknown dimensions {unknown}; use 'resolution' "
                             "and 'depth'")
        if not (hasattr(score_data, "train_with_index")
                or (isinstance(score_data, (tuple, list)) and len(score_data) == 2)):
            raise TypeError("score_data must be a kgrow DataBundle or a tuple (x, y) of arrays")
        if (score_samples is not None and int(score_samples) < 1) or int(score_batch_size) < 1:
            raise ValueError("score_samples and score_batch_size must be >= 1")
        if not 0.0 < float(score_fraction) <= 1.0:
            raise ValueError(f"score_fraction must be in (0, 1], got {score_fraction}")
        if not 0.0 < float(score_budget) <= 1.0:
            raise ValueError(f"score_budget must be in (0, 1], got {score_budget}")
        self.total_epochs = int(epochs)
        self.score_data = score_data
        self.start = float(start)
        self.resolution_values = None if resolutions is None else list(resolutions)
        self.depth_values = None if depths is None else list(depths)
        self.later = dict(later or {})
        self.supernet_epochs = int(supernet_epochs)
        self.score_samples = None if score_samples is None else int(score_samples)
        self.score_fraction = float(score_fraction)
        self.score_budget = float(score_budget)
        self.score_batch_size = int(score_batch_size)
        self.w = w
        self.step_time = step_time
        self.gating = gating
        self.sampling_seed = int(seed)
        self.schedule_path = schedule_path
        self.search: Optional[dict] = None
        self.chosen: list = []
        self.search_seconds = 0.0
        self.score_traces = 0
        self._score_cache = None
        self._score_fn = None
        self._score_warm = False
        self._trace_probe = None
        self._layers = None
        self._assigned = None
        self._epoch = 0
        self._batch_offset = 0
        self._t0 = None
        self._train_start = None

    # -- validation -----------------------------------------------------------
    def set_model(self, model):
        if self.full is None and self.stage_index is None:
            supernet_lib._check_vit_like(model)
        super().set_model(model)
        self._resolve_values()

    def _resolve_values(self):
        full_h, full_w = self.full.image_size
        patch = self.full.image_multiple
        self.resolution_values = search_lib.candidate_values(
            full_h, start=self.start, multiple=patch, values=self.resolution_values,
            name="resolution")
        for r in self.resolution_values:
            if (r * full_w) % (full_h * patch):
                raise ValueError(f"resolution {r} gives width {r * full_w / full_h} for the "
                                 f"{full_h}x{full_w} input, not a multiple of the patch size "
                                 f"{patch}")
        if len(self.full.stage_depths) != 1:
            raise ValueError("AutoProg searches the depth of a model with one run of blocks "
                             f"(a ViT); this model has {len(self.full.stage_depths)} stages")
        full_depth, low = self.full.stage_depths[0], self.full.stage_min_depths[0]
        self.depth_values = search_lib.candidate_values(
            full_depth, start=self.start, values=self.depth_values, name="depth")
        if self.depth_values[0] < low:
            raise ValueError(f"depth candidates must be >= {low}, got {self.depth_values}")

    # -- sizes ----------------------------------------------------------------
    def _full_depth(self) -> int:
        return self.full.stage_depths[0]

    def _stage_of(self, cand, epoch=0) -> Stage:
        return Stage(epoch, resolution=cand["resolution"] / self.full.image_size[0],
                     depth=cand["depth"] / self._full_depth())

    def _image_size(self, resolution) -> list:
        return self.full.resolution_at(resolution / self.full.image_size[0])

    def _current_candidate(self) -> Optional[dict]:
        if not self.chosen:
            return None
        last = self.chosen[-1]
        return {"resolution": last["resolution"], "depth": last["depth"]}

    def candidates(self, stage: int) -> list:
        """The candidate sub-networks of schedule stage `stage` (the last: the full model)."""
        if stage == len(self.schedule.stages) - 1:
            return [{"resolution": self.resolution_values[-1], "depth": self.depth_values[-1]}]
        return search_lib.stage_candidates(self.resolution_values, self.depth_values,
                                           current=self._current_candidate(), later=self.later)

    # -- training hooks -------------------------------------------------------
    def on_train_begin(self, logs=None):
        ctrl = self.controller
        # The scoring (and MoGrow) EMA, whatever depth_source is. kgrow
        # bundles have no static length: the scoring bundle tells it.
        self._add_growth_ema((self.params or {}).get("steps")
                             or getattr(self.score_data, "steps_per_epoch", None) or 100)
        super().on_train_begin(logs)
        ctrl.register_state(STATE_NAME, self._get_search_state, self._set_search_state)
        self._train_start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.controller.unregister_state(STATE_NAME)
        self.events = [e for e in self.events if e.get("kind") != "searched_schedule"]
        self.events.append({"kind": "searched_schedule",
                            "schedule": self.searched_schedule().to_dict(),
                            "search_seconds": self.search_seconds})
        self._write_schedule()
        super().on_train_end(logs)

    def _get_search_state(self):
        return {"search": None if self.search is None else json.loads(json.dumps(self.search)),
                "chosen": list(self.chosen), "search_seconds": self.search_seconds}

    def _set_search_state(self, state):
        self.search = state.get("search")
        if self.search is not None:
            self.search["timings"] = {int(k): list(v)
                                      for k, v in self.search["timings"].items()}
        self.chosen = list(state.get("chosen", []))
        self.search_seconds = float(state.get("search_seconds", 0.0))
        self._layers, self._assigned, self._score_fn = None, None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._layers, self._assigned = None, None
        super().on_epoch_begin(epoch, logs)
        # Resumed inside this epoch: Keras counts its batches from 0 again, but
        # the sub-network of a step belongs to its place in the whole epoch.
        self._batch_offset = int(self.controller.step)
        if self.search is not None:
            # What FLOP meters counting at epoch begin see: the middle candidate.
            candidates = self.search["candidates"]
            self._switch(candidates[len(candidates) // 2])

    def controlled_epoch_begin(self, epoch: int) -> None:
        if self.search is not None:
            if epoch >= self.search["score_epoch"]:
                self._finish_search(epoch)
            return
        index = self.schedule.stage_index_at(epoch)
        if index == self.stage_index:
            return
        candidates = self.candidates(index)
        if len(candidates) == 1:
            if index != len(self.schedule.stages) - 1:
                self.set_next_stage(self._stage_of(candidates[0]))
            super().controlled_epoch_begin(epoch)
            self._record_choice(epoch, index, candidates, 0, None)
            return
        self._start_supernet(epoch, index, candidates)

    def _sample(self, batch: int) -> int:
        s = self.search
        rng = np.random.default_rng([self.sampling_seed, s["stage"], self._epoch, int(batch)])
        return int(rng.integers(len(s["candidates"])))

    def _switch(self, cand) -> None:
        key = (cand["depth"], cand["resolution"])
        if key == self._assigned:
            return
        if self._layers is None:
            self._layers = supernet_lib.supernet_layers(self.model, self.search["info"])
        supernet_lib.set_subnetwork(self.model, self.search["info"], cand["depth"],
                                    self._image_size(cand["resolution"]), layers=self._layers)
        self._assigned = key

    def on_train_batch_begin(self, batch, logs=None):
        if self.search is None:
            if self._trace_probe is not None and len(self._trace_probe) < 4:
                self._t0 = (None, int(batch), time.perf_counter())
            return
        index = self._sample(int(batch) + self._batch_offset)
        self._switch(self.search["candidates"][index])
        self._t0 = (index, int(batch), time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        if self._trace_probe is not None and self.search is None and self._t0 is not None:
            self._trace_probe.append(time.perf_counter() - self._t0[2])
            self._t0 = None
            return
        if self.search is None or self._t0 is None:
            return
        index, b, t0 = self._t0
        self._t0 = None
        seconds = time.perf_counter() - t0
        if b == 0:  # the first step of an epoch also traces / starts the pipeline
            self.search["first_steps"].append(seconds)
            return
        self.search["timings"].setdefault(index, []).append(seconds)

    def on_test_begin(self, logs=None):
        # Validation during supernet epochs sees the largest candidate.
        if self.search is not None:
            self._switch(self.search["candidates"][-1])

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["autoprog/stage"] = float(-1 if self.stage_index is None else self.stage_index)
        logs["autoprog/supernet"] = float(self.search is not None)
        if self.search is not None:  # validation sees the largest candidate
            size = self.search["candidates"][-1]
            logs["autoprog/candidates"] = float(len(self.search["candidates"]))
            logs["autoprog/resolution"] = float(size["resolution"])
            logs["autoprog/depth"] = float(size["depth"])
        elif self.current is not None:
            logs["autoprog/candidates"] = 0.0
            logs["autoprog/resolution"] = float(self.full.resolution_at(self.current.resolution)[0])
            logs["autoprog/depth"] = float(self.full.depths_at(self.current.depth)[0])
        probe, self._trace_probe = self._trace_probe, None
        if probe and len(probe) >= 2 and self.events and self.events[-1].get("kind") == "chosen":
            # The recycled sub-network's trace is compilation Growth would not do.
            extra = max(0.0, probe[0] - float(np.median(probe[1:])))
            self.events[-1]["recycled_trace_s"] = extra
            self.search_seconds += extra
        logs["autoprog/search_s"] = float(self.search_seconds)
        if self._train_start is not None:
            elapsed = time.perf_counter() - self._train_start
            logs["autoprog/overhead"] = float(self.search_seconds / max(elapsed, 1e-9))

    # -- the supernet phase ---------------------------------------------------
    def _model_depth(self) -> int:
        from kgrow.surgery import find_stages
        return find_stages(self.model, spec=self.block_spec)[0].depth

    def _start_supernet(self, epoch, index, candidates):
        from kgrow.surgery import interpolation_mapping, set_depth
        start = time.perf_counter()
        ctrl = self.controller
        top = max(c["depth"] for c in candidates)
        base = min(c["depth"] for c in candidates)
        initial = self.current is None
        depth = self._model_depth()
        model, plan = self.model, None
        with ctrl.scope():
            if depth != top:
                donor = (ctrl.ema(self.EMA_NAME).values()
                         if self.depth_source == "ema" and not initial else None)
                source = "donor" if donor is not None else (
                    "neighbour" if self.depth_source == "ema" else self.depth_source)
                grown = set_depth(model, top, mapping=_depth_mapping(self.depth_mapping),
                                  source=source, donor=donor, spec=self.block_spec,
                                  reset_drop_path=self.reset_drop_path)
                mapping = list(grown.info["mappings"]["0"])
                model, plan = grown.model, grown.plan
            else:
                mapping = list(range(top))
            if initial:
                # The smallest candidate: the blocks the interpolation keeps.
                always_on = sorted(set(interpolation_mapping(top, base)))
            else:
                always_on = [p for p, j in enumerate(mapping) if j not in mapping[:p]]
            if len(always_on) != base:
                raise ValueError(f"the supernet's always-on blocks {always_on} do not form the "
                                 f"smallest candidate ({base} blocks)")
            built = supernet_lib.build_supernet(model, always_on, gating=self.gating,
                                                spec=self.block_spec)
        plan = built.plan if plan is None else built.plan.compose(plan)
        info = built.info["supernet"]
        ctrl.replace_model(GrowthResult(built.model, plan, built.info),
                           reset_optimizer=self.reset_optimizer and not initial,
                           reset_ema=self.reset_ema or initial)
        largest = max(c["resolution"] for c in candidates)
        ctrl.selection.set_image_size(*self._image_size(largest))
        self.stage_index = index
        self._layers, self._assigned, self._score_fn = None, None, None
        self.search = {"stage": int(index), "start_epoch": int(epoch),
                       "score_epoch": int(epoch) + self.supernet_epochs,
                       "candidates": candidates, "info": info, "timings": {},
                       "first_steps": []}
        seconds = time.perf_counter() - start
        self.events.append({"epoch": int(epoch), "stage": int(index), "kind": "supernet",
                            "candidates": candidates, "seconds": seconds,
                            "params": int(self.model.count_params()),
                            "always_on": always_on, "gating": self.gating})
        if self.verbose:
            print(f"\nkgrow.AutoProg: epoch {epoch}: stage {index} supernet with "
                  f"{len(candidates)} candidates, depth {base}-{top}, resolution "
                  f"{min(c['resolution'] for c in candidates)}-{largest}")

    # -- scoring --------------------------------------------------------------
    def _score_arrays(self):
        if self._score_cache is not None:
            return self._score_cache
        import tensorflow as tf
        full = tuple(self.full.image_size)
        data = self.score_data
        wanted = self._score_count()
        if hasattr(data, "train_with_index"):
            selection = data.selection
            live = selection.current_image_size()
            if selection.fixed_size is None:
                selection.set_image_size(*full)  # fixed subset at the full size
            try:
                xs, ys, n = [], [], 0
                for images, labels, _ in data.train_with_index(augment=False, shuffle=False):
                    xs.append(images.numpy())
                    ys.append(labels.numpy())
                    n += len(xs[-1])
                    if n >= wanted:
                        break
            finally:
                if selection.fixed_size is None:
                    selection.set_image_size(*(live if live is not None else (None,)))
            x, y = np.concatenate(xs), np.concatenate(ys)
        else:
            x, y = (np.asarray(a) for a in data)
        x, y = x[:wanted], y[:wanted]
        if tuple(x.shape[1:3]) != full:
            x = tf.image.resize(x.astype("float32"), full, method="bilinear").numpy()
        batch = min(self.score_batch_size, len(x))
        usable = (len(x) // batch) * batch
        self._score_cache = (x[:usable].astype("float32"), y[:usable], batch)
        return self._score_cache

    def _score_count(self) -> int:
        if self.score_samples is not None:
            return self.score_samples
        data = self.score_data
        total = (data.info.num_train if hasattr(data, "info") else len(data[0]))
        searched = max(1, len(self.schedule.stages) - 1)
        # The first stage has the most candidates; not `candidates(0)`, which
        # depends on what was chosen (a resumed run must score the same subset).
        widest = len(search_lib.stage_candidates(self.resolution_values, self.depth_values,
                                                 current=None, later=self.later))
        affordable = (self.score_budget * TRAIN_STEP_FORWARDS * self.total_epochs * total
                      / (searched * widest))
        wanted = min(self.score_fraction * total, affordable)
        return max(self.score_batch_size, int(wanted))

    def _make_score_fn(self):
        import tensorflow as tf
        model = self.model

        def loss(xb, yb):
            self.score_traces += 1  # runs at trace time only
            pred = model(xb, training=False)
            return model.compute_loss(x=xb, y=yb, y_pred=pred, training=False)

        return tf.function(loss)

    def candidate_losses(self, candidates=None) -> tuple:
        """`(losses, seconds)`: each candidate's mean loss on the scoring subset
        with the EMA weights, and the wall time of its scoring pass."""
        s = self.search
        candidates = s["candidates"] if candidates is None else candidates
        x, y, batch = self._score_arrays()
        if self._score_fn is None:
            self._score_fn, self._score_warm = self._make_score_fn(), False
        ema = self.controller.ema(self.EMA_NAME)
        losses, seconds = [], []
        with ema.swap():
            self._assigned = None
            if not self._score_warm:  # trace outside the timed passes
                self._switch(candidates[0])
                self._score_fn(x[:batch], y[:batch])
                self._score_warm = True
            for cand in candidates:
                self._switch(cand)
                t0 = time.perf_counter()
                total = 0.0
                for i in range(0, len(x), batch):
                    total += float(self._score_fn(x[i:i + batch], y[i:i + batch]))
                seconds.append(time.perf_counter() - t0)
                losses.append(total / (len(x) // batch))
        self._assigned = None  # the swap restored the gates the model had
        return losses, seconds

    def _step_times(self, candidates, fallback) -> tuple:
        if callable(self.step_time):
            return [float(self.step_time(dict(c))) for c in candidates], "callable"
        timings = self.search["timings"]
        if all(timings.get(i) for i in range(len(candidates))):
            return [float(np.median(timings[i])) for i in range(len(candidates))], "supernet"
        # Too few supernet steps per candidate: the scoring passes' times.
        return list(fallback), "scoring_pass"

    def _finish_search(self, epoch):
        start = time.perf_counter()
        s = self.search
        candidates = s["candidates"]
        losses, pass_seconds = self.candidate_losses()
        score_seconds = time.perf_counter() - start
        times, source = self._step_times(candidates, pass_seconds)
        # Each worker measured its own times: all decide from their mean, or
        # the machines would grow different models.
        strategy = self.model.distribute_strategy
        losses = agree(strategy, losses).tolist()
        times = agree(strategy, times).tolist()
        pick = search_lib.choose(losses, times, self.w)
        cand = candidates[pick["index"]]
        ctrl = self.controller
        size = self._image_size(cand["resolution"])
        with ctrl.scope():
            result = supernet_lib.extract_subnetwork(self.model, s["info"], cand["depth"], size,
                                                     interpolation=self.interpolation,
                                                     name=self.model.name)
        # Weight recycling: the same training continues on the chosen weights.
        ctrl.replace_model(result, reset_optimizer=False, reset_ema=False)
        ctrl.selection.set_image_size(*size)
        self.search = None
        self._layers, self._assigned, self._score_fn = None, None, None
        self.current = self._stage_of(cand)
        self._trace_probe = []
        seconds = time.perf_counter() - start
        self.search_seconds += seconds
        self._record_choice(epoch, s["stage"], candidates, pick["index"],
                            {"losses": losses, "times": times, "time_source": source,
                             "scores": pick["scores"], "w": pick["w"], "seconds": seconds,
                             "score_s": score_seconds, "recycle_s": seconds - score_seconds,
                             "first_steps": s["first_steps"],
                             "supernet_step_s": _median_all(s["timings"]),
                             "stage_epoch": s["start_epoch"]})

    def _record_choice(self, epoch, index, candidates, pick, details):
        cand = candidates[pick]
        entry = {"stage": int(index), "epoch": int(epoch),
                 "stage_epoch": int(self.schedule.stages[index].epoch),
                 "resolution": int(cand["resolution"]), "depth": int(cand["depth"])}
        self.chosen.append(entry)
        event = {"epoch": int(epoch), "stage": int(index), "kind": "chosen",
                 "candidates": candidates, "choice": cand,
                 "sizes": self._stage_of(cand).to_dict(),
                 "params": int(self.model.count_params())}
        event.update(details or {})
        self.events.append(event)
        self._write_schedule()
        if self.verbose and details is not None:
            print(f"\nkgrow.AutoProg: epoch {epoch}: stage {index} chose resolution "
                  f"{cand['resolution']}, depth {cand['depth']} (w={details['w']:.3f}, "
                  f"search {details['seconds']:.2f}s)")

    # -- the result -----------------------------------------------------------
    def searched_schedule(self) -> GrowthSchedule:
        """The stages chosen so far (the last one full) as a replayable schedule."""
        stages = []
        for entry in self.chosen:
            stage = self._stage_of(entry, entry["stage_epoch"])
            if stages and (stages[-1].resolution, stages[-1].depth) == (stage.resolution,
                                                                        stage.depth):
                continue  # an unchanged size is no new stage
            stages.append(stage)
        if not stages:
            stages = [Stage(0, resolution=1.0, depth=1.0)]
        return GrowthSchedule(stages, total_epochs=self.total_epochs,
                              final_full=stages[-1].resolution == 1.0
                              and stages[-1].depth == 1.0)

    def _write_schedule(self):
        if self.schedule_path is None:
            return
        with open(self.schedule_path, "w") as f:
            f.write(self.searched_schedule().to_json())


def _median_all(timings) -> Optional[float]:
    values = [t for ts in timings.values() for t in ts]
    return float(np.median(values)) if values else None


# -- benchmark method (registered lazily as "autoprog") -----------------------
def bench_autoprog(build_model, context, **options):
    """Bench method `autoprog`: the paper's defaults (4 stages, 2 supernet
    epochs when stages last >= 5 epochs, else 1; MoGrow; scoring on 4% of the
    training set) on the bench's ViT. `options` go to `AutoProg`.

    Needs a resizable data bundle (`context.data` loaded with
    `resizable=True`), whose selection is attached to the controller.
    """
    from kgrow.controller import TrainingController
    bundle = context.data
    if getattr(bundle.selection, "fixed_size", None) is not None:
        raise ValueError("bench method 'autoprog' trains at several resolutions and needs a "
                         "resizable data bundle (kgrow.data.load(..., resizable=True)); this "
                         f"bench run's data is fixed at {bundle.selection.fixed_size}.")
    model = build_model()
    epochs = int(context.train.epochs)
    stages = 4 if epochs >= 12 else max(2, min(4, epochs // 3))
    # The paper's 2 supernet epochs per 25-epoch stage; short bench stages keep
    # most of each stage for the chosen sub-network.
    supernet_epochs = 2 if epochs // stages >= 5 else 1
    TrainingController.of(model).attach_selection(bundle.selection)
    return model, [AutoProg(epochs, bundle, num_stages=stages,
                            supernet_epochs=supernet_epochs, verbose=0, **options)]


def bench_autoprog_carry(build_model, context):
    """Bench method `autoprog_carry`: `autoprog` with the optimizer moments
    carried through every growth instead of reset (for short runs, where the
    reset's first large AdamW steps cost accuracy the run cannot win back)."""
    return bench_autoprog(build_model, context, reset_optimizer=False)


# The bench loads its data with a live image size for methods that ask.
bench_autoprog.data_options = {"resizable": True}
bench_autoprog_carry.data_options = {"resizable": True}
