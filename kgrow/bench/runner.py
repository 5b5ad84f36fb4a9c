"""Runs registered methods on one model/data/epochs/seed setting and reports.

`run_bench(spec, out_dir)` trains the baseline and every other requested
method one after the other in this process, with the same data, model
builder, epochs and seed, then writes `results.json`, `results.md` and
`curves.png` into `out_dir`.

Example:
    >>> spec = BenchSpec.from_profile("quick", methods=["baseline"], epochs=1)
    >>> spec.train.epochs, spec.model
    (1, 'resnet20')
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import time
from typing import Any, Callable, Mapping, Sequence

import keras

from kgrow import training
from kgrow.bench import meters, profiles, registry, report

MEMORY_NOTE = ("peak_mem_mb is the highest resident set size (RSS) of the whole process "
               "while the run trained: the kernel's peak (VmHWM, reset at the run's start) "
               "on Linux, else sampled every 50 ms by a thread (source: {source}); "
               "memory freed by earlier runs in the same process may stay mapped, so "
               "peak_mem_delta_mb (peak minus RSS at the run's start) is also given.")
WALL_NOTE = ("train_wall_s is fit() wall-clock time minus the per-epoch test evaluation "
             "and the FLOPs-meter bookkeeping; it includes graph tracing and the methods' "
             "own callback work.")
FLOPS_NOTE = ("train_flops = sum over epochs of kgrow.flops training FLOPs per sample of "
              "the model as it was at that epoch's begin (frozen layers and sparsity "
              "accounted) x samples delivered that epoch.")


@dataclasses.dataclass
class BenchSpec:
    """One benchmark setting: what to train, on what, and which methods.

    Attributes:
        model: `kgrow.models` name.
        dataset: `kgrow.data` dataset name.
        train: Training hyper-parameters (epochs, batch size, seed, ...).
        model_kwargs: Extra model builder arguments.
        subset: Training samples used (None: all).
        test_subset: Test samples evaluated, the first ones (None: all).
        image_size: Resize to `(H, W)` (None: native).
        data_dir: Where `kgrow.data` looks for files (None: its default).
        methods: Method names; the baseline always runs first.
        seeds: Seeds to repeat every method with.
        profile: Profile name the spec came from (for the report).
    """

    model: str
    dataset: str
    train: training.TrainConfig
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    subset: int | None = None
    image_size: tuple[int, int] | None = None
    data_dir: str | None = None
    methods: Sequence[str] = (registry.BASELINE,)
    seeds: Sequence[int] = (0,)
    profile: str = "custom"
    test_subset: int | None = None

    def __post_init__(self):
        methods = registry.check_methods(list(self.methods))
        if registry.BASELINE in methods:
            methods.remove(registry.BASELINE)
        self.methods = [registry.BASELINE] + methods
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}.")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"image_size must be (H, W) of positive integers, got "
                                 f"{self.image_size!r}.")

    @classmethod
    def from_profile(cls, name: str, *, methods: Sequence[str] = (registry.BASELINE,),
                     seed: int = 0, num_seeds: int | None = None,
                     **overrides) -> "BenchSpec":
        """A spec from a profile, with overrides.

        Args:
            name: Profile name (`kgrow.bench.profiles`).
            methods: Method names.
            seed: First seed; `num_seeds` consecutive seeds are used.
            num_seeds: How many seeds to repeat each method with (None: the
                profile's `seeds`).
            **overrides: Any `Profile` field (`model`, `dataset`, `epochs`,
                `batch_size`, `subset`, `test_subset`, `lr`, ...) or `data_dir`. None values
                are ignored so unset command-line flags keep the profile's.
                When `epochs` is overridden and `warmup_epochs` is not, the
                profile's warm-up is capped at half the epochs.

        Raises:
            KeyError: Unknown profile or method.
            TypeError: Unknown override name.
        """
        profile = profiles.get_profile(name)
        fields = {f.name for f in dataclasses.fields(profiles.Profile)} - {"name",
                                                                          "description",
                                                                          "budget"}
        unknown = set(overrides) - fields - {"data_dir"}
        if unknown:
            raise TypeError(f"Unknown override(s) {sorted(unknown)}; allowed: "
                            f"{sorted(fields | {'data_dir'})}.")
        if num_seeds is None:
            num_seeds = profile.seeds
        if int(num_seeds) != num_seeds or num_seeds < 1:
            raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}.")
        values = {f: getattr(profile, f) for f in fields}
        values.update({k: v for k, v in overrides.items() if v is not None and k != "data_dir"})
        if overrides.get("warmup_epochs") is None and values["epochs"] >= 1:
            # The profile's warm-up belongs to its epoch count; a shorter run
            # keeps at most half of its epochs for warm-up.
            values["warmup_epochs"] = min(values["warmup_epochs"], 0.5 * values["epochs"])
        values["seeds"] = int(num_seeds)
        return cls.from_settings(dataclasses.replace(profile, **values), methods=methods,
                                 seed=seed, data_dir=overrides.get("data_dir"))

    @classmethod
    def from_settings(cls, settings: "profiles.Profile | Mapping[str, Any]", *,
                      methods: Sequence[str] = (registry.BASELINE,), seed: int = 0,
                      data_dir: str | None = None) -> "BenchSpec":
        """The spec of a profile's settings as they are, e.g. `results.json["settings"]`.

        Args:
            settings: A `Profile` or its `to_dict` form (the effective settings
                of a run: `settings()` of its spec).
            methods: Method names.
            seed: First seed; `settings.seeds` consecutive seeds are used.
            data_dir: Directory `kgrow.data` reads datasets from.

        Example:
            >>> spec = BenchSpec.from_profile("quick", epochs=2, subset=1000, seed=3)
            >>> BenchSpec.from_settings(spec.settings(), seed=3) == spec
            True
        """
        p = settings if isinstance(settings, profiles.Profile) else \
            profiles.Profile.from_dict(settings)
        train = training.TrainConfig(
            optimizer=p.optimizer, lr=p.lr, batch_size=p.batch_size, epochs=p.epochs,
            warmup_epochs=p.warmup_epochs, final_lr=p.final_lr, weight_decay=p.weight_decay,
            no_decay=p.no_decay, label_smoothing=p.label_smoothing, augment=p.augment,
            seed=seed)
        return cls(model=p.model, dataset=p.dataset, train=train,
                   model_kwargs=dict(p.model_kwargs), subset=p.subset,
                   test_subset=p.test_subset, image_size=p.image_size, data_dir=data_dir,
                   methods=methods,
                   seeds=range(seed, seed + int(p.seeds)), profile=p.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description of the spec (`from_dict` reads it back)."""
        return {"model": self.model, "model_kwargs": dict(self.model_kwargs),
                "dataset": self.dataset, "subset": self.subset,
                "test_subset": self.test_subset,
                "image_size": None if self.image_size is None else list(self.image_size),
                "data_dir": self.data_dir, "methods": list(self.methods),
                "seeds": list(self.seeds), "profile": self.profile,
                "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchSpec":
        """The spec a `to_dict` (e.g. `results.json["spec"]`) describes.

        Example:
            >>> spec = BenchSpec.from_profile("standard", epochs=2, subset=1000)
            >>> BenchSpec.from_dict(spec.to_dict()) == spec
            True
        """
        values = dict(d)
        values["train"] = training.TrainConfig(**values["train"])
        return cls(**values)

    def settings(self) -> dict[str, Any]:
        """The effective profile settings of this spec (`Profile.to_dict` form).

        A profile with every override applied: `Profile.from_dict` of it
        with `BenchSpec.from_profile` reproduces the run's settings.
        """
        train = self.train
        base = profiles.get_profile(self.profile) if self.profile in \
            profiles.available_profiles() else None
        return profiles.Profile(
            name=self.profile, description="" if base is None else base.description,
            model=self.model, dataset=self.dataset, epochs=train.epochs,
            batch_size=train.batch_size, model_kwargs=dict(self.model_kwargs),
            subset=self.subset, test_subset=self.test_subset, image_size=self.image_size,
            optimizer=train.optimizer,
            lr=train.lr, warmup_epochs=train.warmup_epochs, final_lr=train.final_lr,
            weight_decay=train.weight_decay, no_decay=train.no_decay,
            label_smoothing=train.label_smoothing, augment=train.augment,
            budget="" if base is None else base.budget, seeds=len(self.seeds)).to_dict()


def load_data(spec: BenchSpec, seed: int, resizable: bool = False,
              elastic_batch: bool = False):
    """The `DataBundle` of one run (fresh: methods may change its selection).

    `resizable`, `elastic_batch`: a live training image or batch size (a
    method's `data_options`).
    """
    from kgrow import data
    return data.load(spec.dataset, batch_size=spec.train.batch_size,
                     image_size=spec.image_size, augment=spec.train.augment,
                     subset=spec.subset, seed=seed, data_dir=spec.data_dir,
                     label_mode="onehot", resizable=resizable, elastic_batch=elastic_batch,
                     test_subset=spec.test_subset)


def live_input_shape(bundle) -> tuple:
    """Input shape `(H, W, C)` the next epoch is trained at.

    The live image size of the bundle's selection (progressive resizing sets
    it between epochs) when one is set, else the size the bundle delivers.
    """
    shape = tuple(int(d) for d in bundle.info.image_shape)
    live = bundle.selection.current_image_size()
    return shape if live is None else (int(live[0]), int(live[1]), shape[2])


def _history_value(history: Mapping[str, list], key: str, method: str) -> list:
    if key not in history:
        raise KeyError(
            f"Method {method!r}: fit logged no {key!r} (logged: {sorted(history)}). The bench "
            f"needs a metric named 'accuracy'; compile with kgrow.training."
            f"compile_for_classification or leave the model uncompiled.")
    return history[key]


def make_strategy(name: str | None):
    """The `tf.distribute` strategy `kgrow bench --distribute NAME` trains under.

    `"none"`/None: no strategy; `"mirrored"`: MirroredStrategy over this
    machine's devices; `"multi_worker"`: MultiWorkerMirroredStrategy over the
    workers that the `TF_CONFIG` environment variable lists (start the same
    command on every worker; create it before any other TensorFlow work).

    Raises:
        ValueError: an unknown name, or "multi_worker" without TF_CONFIG.
    """
    import tensorflow as tf
    if name in (None, "none"):
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--distribute multi_worker needs the TF_CONFIG environment "
                             "variable (cluster and this worker's task), e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; use none, mirrored or multi_worker.")


def is_chief(strategy) -> bool:
    """Whether this process writes results (always, without a multi-worker strategy)."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def run_method(method: str, spec: BenchSpec, seed: int, verbose: int | str = 2,
               log: Callable[[str], None] = print,
               extra_callbacks: Sequence[keras.callbacks.Callback] = (),
               strategy=None) -> dict[str, Any]:
    """Trains one method once and measures it.

    Args:
        method: Registered method name.
        spec: The benchmark setting.
        seed: Seed for weights, data order and augmentation.
        verbose: Keras `fit` verbosity (0 silent, 1 progress bar, 2 one line
            per epoch).
        log: Where the one-line run summaries go.
        extra_callbacks: Instruments added to `fit` after the method's own
            callbacks (e.g. per-batch timers of `benchmarks/`); their time
            counts as training time.
        strategy: A `tf.distribute` strategy to build, compile and train
            under (`make_strategy`), or None.

    Returns:
        The run record: `train_wall_s`, `train_flops`, `test_acc`,
        `peak_mem_mb`, `curve` (per epoch: `epoch`, `wall_s`, `train_loss`,
        `test_acc`, `samples`, `train_flops` cumulative) and details.
    """
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)
    train_cfg = dataclasses.replace(spec.train, seed=seed)
    options = registry.data_options(method)
    bundle = load_data(spec, seed, resizable=bool(options.get("resizable")),
                       elastic_batch=bool(options.get("elastic_batch")))
    # A resizable run's model may be at a stage's resolution when it is evaluated.
    test_data = bundle.test_at_live_size() if options.get("resizable") else bundle.test
    context = registry.MethodContext(
        model_name=spec.model, model_kwargs=dict(spec.model_kwargs),
        input_shape=tuple(bundle.info.image_shape), num_classes=bundle.info.num_classes,
        train=train_cfg, data=bundle, steps_per_epoch=int(bundle.steps_per_epoch),
        label_mode=bundle.info.label_mode)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        setup = registry.setup_method(method, context)
        model = setup.model
        if not getattr(model, "compiled", False):
            context.compile(model)

    counter = meters.SampleCounter()
    clock = meters.RunClock()
    flops_meter = meters.FlopsMeter(counter, lambda: live_input_shape(bundle), clock=clock,
                                    sparsity=setup.sparsity)
    callbacks = [clock.head, *setup.callbacks, flops_meter, *extra_callbacks, clock.tail]
    # shuffle=False: the bundle's pipeline already reshuffles every epoch.
    with meters.PeakMemory() as memory:
        train_data = bundle.train_with_ids() if options.get("sample_ids") else bundle.train
        history = model.fit(counter.wrap(train_data), epochs=train_cfg.epochs,
                            validation_data=test_data, callbacks=callbacks,
                            verbose=verbose, shuffle=False).history
    losses = _history_value(history, "loss", method)
    accs = _history_value(history, "val_accuracy", method)

    curve, cumulative = [], 0.0
    for i, (loss, acc) in enumerate(zip(losses, accs)):
        cumulative += flops_meter.epochs[i]["flops"]
        curve.append({"epoch": i + 1, "wall_s": clock.epoch_walls[i],
                      "train_loss": float(loss), "test_acc": float(acc),
                      "samples": flops_meter.epochs[i]["samples"],
                      "flops_per_sample": flops_meter.epochs[i]["flops_per_sample"],
                      "train_flops": cumulative,
                      # What the method's callbacks logged (grow/width, freeze/blocks, ...).
                      **{key: float(values[i]) for key, values in history.items()
                         if "/" in key and key != "kgrow/train_flops" and i < len(values)}})
    record = {
        "method": method, "seed": seed,
        "train_wall_s": clock.elapsed(), "eval_wall_s": clock.eval_s,
        "train_flops": flops_meter.total(),
        "test_acc": float(accs[-1]), "num_test": int(bundle.info.num_test),
        "test_acc_stderr_pp": report.binomial_stderr_pp(float(accs[-1]),
                                                       int(bundle.info.num_test)),
        "peak_mem_mb": memory.peak_mb, "start_mem_mb": memory.start_mb,
        "peak_mem_delta_mb": memory.peak_mb - memory.start_mb,
        "peak_mem_source": memory.source,
        "epochs_run": len(curve), "samples_seen": sum(p["samples"] for p in curve),
        "final_params": int(model.count_params()),
        "flops_notes": list(flops_meter.notes),
        "curve": curve,
        # What the method's callbacks did (e.g. Growth steps with their cost).
        "method_events": [dict(e) for cb in setup.callbacks for e in getattr(cb, "events", [])],
    }
    log(f"[kgrow bench] {method} (seed {seed}): test acc {100 * record['test_acc']:.2f}% "
        f"(±{record['test_acc_stderr_pp']:.2f} pp), train {record['train_wall_s']:.1f} s "
        f"(+{record['eval_wall_s']:.1f} s eval), {record['train_flops']:.3g} train FLOPs, "
        f"peak RSS {record['peak_mem_mb']:.0f} MB")
    return record


def _strategy_info(strategy) -> dict[str, Any]:
    if strategy is None:
        return {"strategy": None, "replicas": 1}
    return {"strategy": type(strategy).__name__,
            "replicas": int(strategy.num_replicas_in_sync)}


def _environment() -> dict[str, Any]:
    import tensorflow as tf
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            # 0 means TensorFlow's choice; see benchmarks/cpu_settings.py.
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            # Set per worker by `--local-workers` (kgrow.bench.launch.worker_threads).
            "thread_env": {k: os.environ[k] for k in ("TF_NUM_INTRAOP_THREADS",
                                                      "TF_NUM_INTEROP_THREADS",
                                                      "OMP_NUM_THREADS") if k in os.environ},
            "jit_compile": False}


def build_results(spec: BenchSpec, records: Mapping[str, Sequence[Mapping]],
                  probe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`results.json` content from the run records of every method.

    Args:
        spec: The benchmark setting.
        records: Method name -> its run records (one per seed).
        probe: Optional step-time probe result with a `"fit"`
            (`kgrow.bench.probe`); comparisons then carry the wall-clock
            speedup it predicts from each run's per-epoch FLOPs.
    """
    runs = {name: report.aggregate(recs) for name, recs in records.items()}
    sources = sorted({r["peak_mem_source"] for recs in records.values() for r in recs})
    notes = [WALL_NOTE, FLOPS_NOTE, MEMORY_NOTE.format(source=", ".join(sources))]
    notes += [f"{name} seed {r['seed']}: {n}" for name, recs in records.items()
              for r in recs for n in r.get("flops_notes", ())]
    return {
        "model": spec.model, "dataset": spec.dataset, "epochs": spec.train.epochs,
        "seed": spec.seeds[0], "seeds": list(spec.seeds), "n_seeds": len(spec.seeds),
        "profile": spec.profile, "runs": runs,
        **compare_runs(runs, probe, spec.train.batch_size),
        "settings": spec.settings(), "spec": spec.to_dict(),
        "probe": None if probe is None else {
            k: probe[k] for k in ("fit", "family_fits", "method_families", "png")
            if k in probe},
        "environment": _environment(), "notes": notes,
    }


def compare_runs(runs: Mapping[str, Any], probe: Mapping[str, Any] | None,
                 batch_size: int) -> dict[str, Any]:
    """The `comparisons` and `part_comparisons` of `results.json` from its `runs`.

    `kgrow report` calls it again on a finished bench, so its tables carry
    the comparisons of the kgrow that renders them.
    """
    fits = {}
    if probe is not None and "fit" in probe:
        from kgrow.bench.probe import method_fit
        fits = {name: method_fit(probe, name) for name in runs}
    return {"comparisons": report.compare(runs, registry.BASELINE, fits=fits,
                                          batch_size=batch_size),
            "part_comparisons": report.compare_to_parts(runs, registry.COMPOSE)}


def write_results(results: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """Writes results.json, results.md, curves.png and schedule.png; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name)
             for name in ("results.json", "results.md", "curves.png", "schedule.png")}
    with open(paths["results.json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    render_results(results, out_dir)
    return paths


def render_results(results: Mapping[str, Any], out_dir: str) -> list[str]:
    """Writes results.md, curves.png and schedule.png of `results`; returns their paths.

    `kgrow report DIR` calls it on a finished bench's results.json.
    """
    paths = [os.path.join(out_dir, name)
             for name in ("results.md", "curves.png", "schedule.png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(report.to_markdown(results))
    report.plot_curves(results, paths[1])
    report.plot_schedule(results, paths[2])
    return paths


def run_order(methods: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The order of the runs: every method for the first seed, then the next seed.

    Runs alternate baseline, methods, baseline, methods, ... so slow drift of
    a shared machine (other jobs, thermal state) hits every method alike, and
    each method's run sits next to the baseline run it is paired with.

    Example:
        >>> run_order(["baseline", "grow_width"], [0, 1])
        [('baseline', 0), ('grow_width', 0), ('baseline', 1), ('grow_width', 1)]
    """
    return [(name, seed) for seed in seeds for name in methods]


def finished_runs(spec: BenchSpec, out_dir: str) -> dict[str, list]:
    """The run records of `spec`'s methods and seeds already in `out_dir`'s results.json.

    For resuming a benchmark that was interrupted (or is continued in
    another session): the runs it finished are kept, paired as they were.

    Raises:
        ValueError: the results there were measured with other settings
            (more seeds are fine).
    """
    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    theirs = saved.get("settings") or {}
    if theirs:  # settings added since they were saved compare as their defaults
        theirs = json.loads(json.dumps(profiles.Profile.from_dict(theirs).to_dict()))
    theirs = {k: v for k, v in theirs.items() if k != "seeds"}
    ours = {k: v for k, v in json.loads(json.dumps(spec.settings())).items() if k != "seeds"}
    if theirs != ours:
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ValueError(f"{path} holds a benchmark with other settings (they differ in "
                         f"{changed}); resume with the same profile and flags, or use another "
                         f"--out.")
    return {name: [r for r in run.get("per_seed", []) if r["seed"] in spec.seeds]
            for name, run in saved.get("runs", {}).items() if name in spec.methods}


def run_bench(spec: BenchSpec, out_dir: str, verbose: int | str = 2,
              log: Callable[[str], None] = print,
              probe: Mapping[str, Any] | None = None, strategy=None,
              resume: bool = False) -> dict[str, Any]:
    """Runs every method of `spec` for every seed and writes the reports.

    Runs go in `run_order` (baseline first, then the methods, for each seed
    in turn); results are rewritten after every run, so an interrupted
    benchmark keeps what finished, and with `resume` a second call runs
    only what is missing (`finished_runs`).

    Args:
        spec: The benchmark setting.
        out_dir: Where results.json, results.md and the plots go.
        verbose: Keras `fit` verbosity.
        log: Where progress lines go.
        probe: A step-time probe result (`kgrow.bench.probe.run_probe`, or
            its `probe.json`): adds predicted wall-clock speedups.
        strategy: Train every run under this `tf.distribute` strategy
            (`make_strategy`); with several workers only the chief writes.
        resume: Keep the runs `out_dir`'s results.json already has.

    Returns:
        The `results.json` content.
    """
    records: dict[str, list] = {name: [] for name in spec.methods}
    if resume:
        records.update(finished_runs(spec, out_dir))
    have = {(name, r["seed"]) for name, recs in records.items() for r in recs}
    order = run_order(spec.methods, spec.seeds)
    started = time.perf_counter()
    results = None
    for done, (name, seed) in enumerate(order, 1):
        if (name, seed) in have:
            log(f"[kgrow bench] run {done}/{len(order)}: {name} (seed {seed}) - kept from "
                f"{os.path.join(out_dir, 'results.json')}")
            continue
        log(f"[kgrow bench] run {done}/{len(order)}: {name} (seed {seed}) - {spec.model} on "
            f"{spec.dataset}, {spec.train.epochs} epochs, profile {spec.profile}")
        records[name].append(run_method(name, spec, seed, verbose=verbose, log=log,
                                        strategy=strategy))
        records[name].sort(key=lambda r: spec.seeds.index(r["seed"]))
        finished = {k: v for k, v in records.items() if v}
        if registry.BASELINE in finished:
            results = build_results(spec, finished, probe=probe)
            results["environment"]["distribute"] = _strategy_info(strategy)
            if is_chief(strategy):
                write_results(results, out_dir)
    if results is None and records.get(registry.BASELINE):  # every run was kept
        results = build_results(spec, {k: v for k, v in records.items() if v}, probe=probe)
        results["environment"]["distribute"] = _strategy_info(strategy)
        if is_chief(strategy):
            write_results(results, out_dir)
    where = (f"wrote {os.path.join(out_dir, 'results.json')}, results.md, curves.png, "
             f"schedule.png" if is_chief(strategy) else "the chief worker writes the results")
    log(f"[kgrow bench] done in {time.perf_counter() - started:.0f} s; {where}")
    return results
