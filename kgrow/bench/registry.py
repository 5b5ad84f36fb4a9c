"""The method registry of the benchmark.

A *method* is a way to train the benchmark's model: the plain baseline, or a
kgrow technique (growth, freezing, sparsity, sieving, ...). Each is registered
under a name with a *factory*:

    factory(build_model, context) -> (model, callbacks) | MethodSetup

- `build_model(**overrides)` builds the benchmark's (baseline) model, with
  keyword overrides for the model builder (e.g. `width=8` to start narrow);
- `context` is a `MethodContext`: the model name and arguments, the data
  bundle of this run, the `TrainConfig`, steps per epoch and a `compile`
  helper that applies the run's standard optimizer, schedule and loss.

The factory returns the model to pass to `fit` and the Keras callbacks that
implement the method. A model it returns uncompiled is compiled with
`context.compile`. Returning a `MethodSetup` also lets a method tell the FLOPs
meter about weight sparsity.

Methods compose: `"a+b+c"` names one run in which the factories of `a`, `b`
and `c` set up the *same* model (the first `build_model` call builds it, the
others get it back) and all their callbacks go to one `fit`; the controller
orders them by phase (architecture, freezing, masks, data). A part that builds
a model of its own, or two parts that set the same `MethodSetup` field to
different values, are refused with the reason.

Example:
    >>> from kgrow import bench
    >>> def half_width(build_model, context):
    ...     return build_model(width=8), []
    >>> bench.register_method("half_width_demo", half_width)
    >>> "half_width_demo" in bench.available_methods()
    True
    >>> bench.unregister_method("half_width_demo")
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Sequence

BASELINE = "baseline"

_REGISTRY: dict[str, Callable | str] = {}


@dataclasses.dataclass
class MethodSetup:
    """What a method factory hands to the benchmark runner.

    Attributes:
        model: The Keras model `fit` runs on (compiled or not).
        callbacks: Keras callbacks implementing the method.
        sparsity: Passed to `kgrow.flops.count(..., sparsity=...)` when the
            FLOPs meter counts the model: a value, or a callable
            `sparsity(model)` evaluated at each epoch begin. None: dense.
    """

    model: Any
    callbacks: Sequence[Any] = ()
    sparsity: Any = None


@dataclasses.dataclass
class MethodContext:
    """Everything a method factory may need about the run it sets up.

    Attributes:
        model_name: Name for `kgrow.models.get`.
        model_kwargs: Keyword arguments of the baseline model.
        input_shape: Model input shape `(H, W, C)`.
        num_classes: Number of classes.
        train: The run's `kgrow.training.TrainConfig`.
        data: The run's `kgrow.data.DataBundle` (fresh for every run, so a
            method may change its live selection).
        steps_per_epoch: Optimizer steps per epoch at the start.
        label_mode: Label encoding of the data (`"onehot"`/`"sparse"`).
    """

    model_name: str
    model_kwargs: Mapping[str, Any]
    input_shape: tuple
    num_classes: int
    train: Any
    data: Any
    steps_per_epoch: int
    label_mode: str = "onehot"

    def build_model(self, **overrides):
        """Builds the benchmark model, with builder arguments overridden."""
        from kgrow import models
        kwargs = {**dict(self.model_kwargs), **overrides}
        return models.get(self.model_name, self.input_shape, self.num_classes, **kwargs)

    def compile(self, model):
        """Compiles `model` with the run's optimizer, schedule and loss."""
        from kgrow import training
        return training.compile_with_config(
            model, self.train, self.steps_per_epoch, label_mode=self.label_mode)


def baseline_factory(build_model, context):
    """The reference method: the full model trained with plain `fit`.

    Example:
        >>> baseline_factory.__name__
        'baseline_factory'
    """
    del context  # the runner compiles with the standard recipe
    return build_model(), []


def register_method(name: str, factory: Callable | str, overwrite: bool = False) -> None:
    """Registers a training method for the benchmark.

    Args:
        name: Name used on the command line (`--methods name`); letters,
            digits, `_`, `-` and `.` only (no commas).
        factory: `factory(build_model, context)` returning `(model,
            callbacks)` or a `MethodSetup`; or a `"module:attribute"` string
            naming one, imported when the method is first used.
        overwrite: Replace an existing registration of `name`.

    Raises:
        ValueError: Bad name, or name taken and `overwrite` is False.
        TypeError: `factory` is neither callable nor a `"module:attr"` string.

    Example:
        >>> register_method("baseline_again", get_method("baseline"))
        >>> unregister_method("baseline_again")
    """
    if not isinstance(name, str) or not name or not all(
            c.isalnum() or c in "_-." for c in name):
        raise ValueError(
            f"Method name must be a non-empty string of letters, digits, '_', '-' or '.', "
            f"got {name!r}.")
    if isinstance(factory, str):
        if factory.count(":") != 1 or not all(factory.split(":")):
            raise ValueError(f"A lazy factory must look like 'package.module:attribute', "
                             f"got {factory!r}.")
    elif not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable or a 'module:attribute' "
                        f"string, got {type(factory).__name__}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A method named {name!r} is already registered; pass "
                         f"overwrite=True to replace it.")
    _REGISTRY[name] = factory


def unregister_method(name: str) -> None:
    """Removes a registered method (the built-in baseline cannot be removed).

    Raises:
        KeyError: `name` is not registered.
        ValueError: `name` is the baseline.
    """
    if name == BASELINE:
        raise ValueError("The baseline method is built in and cannot be unregistered.")
    if name not in _REGISTRY:
        raise KeyError(_unknown_message(name))
    del _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of the registered methods, baseline first, then alphabetical."""
    return [BASELINE] + sorted(n for n in _REGISTRY if n != BASELINE)


def describe_method(name: str) -> dict:
    """`{"name", "description", "source"}` of a registered method.

    The description is the first line of the factory's docstring; the
    source is the first line of the docstring of the `kgrow.methods` package
    the factory comes from (the paper), else the factory's module.

    Example:
        >>> describe_method("baseline")["description"]
        'The reference method: the full model trained with plain `fit`.'
    """
    factory = get_method(name)
    doc = (getattr(factory, "__doc__", None) or "").strip()
    module = getattr(factory, "__module__", "") or ""
    source = module
    if module.startswith("kgrow.methods."):
        package = importlib.import_module(".".join(module.split(".")[:3]))
        source = ((package.__doc__ or "").strip().splitlines() or [module])[0]
    return {"name": name, "description": doc.splitlines()[0] if doc else "(no description)",
            "source": source}


def _unknown_message(name: str) -> str:
    return (f"Unknown method {name!r}. Registered methods: {', '.join(available_methods())}. "
            f"Register more with kgrow.bench.register_method(name, factory) or load a "
            f"module that does with --plugin MODULE.")


def get_method(name: str) -> Callable:
    """The factory registered under `name` (importing it if registered lazily).

    Raises:
        KeyError: `name` is not registered; the message lists what is.
    """
    if name not in _REGISTRY:
        raise KeyError(_unknown_message(name))
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        module = importlib.import_module(module_name)
        try:
            factory = getattr(module, attribute)
        except AttributeError:
            raise ImportError(f"Method {name!r} points at {_REGISTRY[name]!r}, but module "
                              f"{module_name!r} has no attribute {attribute!r}.") from None
        _REGISTRY[name] = factory
    return factory


COMPOSE = "+"


def method_parts(name: str) -> list[str]:
    """The registered methods a (possibly composed) method name is made of.

    Example:
        >>> method_parts("grow_width+freeze")
        ['grow_width', 'freeze']
    """
    return [part.strip() for part in name.split(COMPOSE)]


def check_methods(names: Sequence[str]) -> list[str]:
    """Validates a list of method names; returns it without duplicates.

    A composed name `"a+b"` is valid when each part is registered, none is
    the baseline and no part repeats.

    Raises:
        KeyError: Some name is not registered (all unknown names are listed).
        ValueError: The list is empty, or a composed name is malformed.
    """
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"No method given; registered methods: {', '.join(available_methods())}.")
    for name in names:
        parts = method_parts(name)
        if len(parts) > 1 and (BASELINE in parts or "" in parts or len(set(parts)) < len(parts)):
            raise ValueError(f"Composed method {name!r} must join distinct registered methods "
                             f"other than the baseline with {COMPOSE!r}, e.g. "
                             f"'grow_width{COMPOSE}freeze'.")
    unknown = [p for n in names for p in method_parts(n) if p not in _REGISTRY]
    if unknown:
        raise KeyError(
            f"Unknown method(s) {', '.join(map(repr, unknown))}. Registered methods: "
            f"{', '.join(available_methods())}. Register more with "
            f"kgrow.bench.register_method(name, factory) or load a module that does with "
            f"--plugin MODULE.")
    return list(dict.fromkeys(names))


#: Data settings a bench method may ask for (`data_options`).
DATA_OPTIONS = ("resizable", "elastic_batch", "sample_ids")


def data_options(name: str) -> dict:
    """Data settings a method needs, from its factory's ``data_options`` attribute.

    ``{"resizable": True}`` makes the runner load the run's bundle with a
    live image size (`kgrow.data.load(..., resizable=True)`) and evaluate on
    ``bundle.test_at_live_size()``; ``{"elastic_batch": True}`` with a live
    batch size (`kgrow.data.load(..., elastic_batch=True)`); ``{"sample_ids":
    True}`` makes `fit` train on ``bundle.train_with_ids()`` (for callbacks
    with prediction hooks, e.g. data sieving). Default: ``{}``. A composed
    name needs what any of its parts needs.
    """
    options = {}
    for part in method_parts(name):
        options.update(getattr(get_method(part), "data_options", None) or {})
    unknown = sorted(set(options) - set(DATA_OPTIONS))
    if unknown:
        raise ValueError(f"Method {name!r} asks for data options {unknown}; supported: "
                         f"{list(DATA_OPTIONS)}.")
    return options


def setup_method(name: str, context: MethodContext) -> MethodSetup:
    """Calls the factory of `name` and normalises what it returns.

    A composed name (`"a+b"`) sets up every part on one shared model (see the
    module docstring).

    Raises:
        TypeError: The factory returned something other than `(model,
            callbacks)` or a `MethodSetup`.
        ValueError: The parts of a composed name cannot share one run.
    """
    parts = method_parts(name)
    if len(parts) > 1:
        return _compose(name, parts, context)
    result = get_method(name)(context.build_model, context)
    if isinstance(result, MethodSetup):
        setup = result
    elif isinstance(result, tuple) and len(result) == 2:
        setup = MethodSetup(model=result[0], callbacks=result[1] or ())
    else:
        raise TypeError(f"Method {name!r} returned {type(result).__name__}; a factory must "
                        f"return (model, callbacks) or a kgrow.bench.MethodSetup.")
    if not hasattr(setup.model, "fit"):
        raise TypeError(f"Method {name!r} returned a model of type "
                        f"{type(setup.model).__name__}, not a keras.Model.")
    setup.callbacks = list(setup.callbacks)
    return setup


class _SharedModelContext:
    """A `MethodContext` whose `build_model` builds one model and returns it again."""

    def __init__(self, context: MethodContext):
        self._context = context
        self._built = None

    def __getattr__(self, attribute):
        return getattr(self._context, attribute)

    def build_model(self, **overrides):
        if self._built is None:
            self._built = (overrides, self._context.build_model(**overrides))
        elif overrides != self._built[0]:
            raise ValueError(
                f"Composed methods must train one model, but their parts asked for models built "
                f"with different arguments ({self._built[0]} and {overrides}); compose methods "
                f"that all start from the full model.")
        return self._built[1]


def _compose(name: str, parts: Sequence[str], context: MethodContext) -> MethodSetup:
    shared = _SharedModelContext(context)
    setups = []
    for part in parts:
        setup = setup_method(part, shared)
        if shared._built is None or setup.model is not shared._built[1]:
            raise ValueError(
                f"Method {part!r} in {name!r} returned a model it built without "
                f"context.build_model(), so it cannot share one run with the other parts.")
        setups.append((part, setup))
    merged = MethodSetup(model=shared._built[1],
                         callbacks=[cb for _, setup in setups for cb in setup.callbacks])
    for field in dataclasses.fields(MethodSetup):
        if field.name in ("model", "callbacks"):
            continue
        # A field a part left at its default says nothing; two parts that set
        # it (even to equal values: a sparsity callable each) would need a
        # combination rule kgrow does not guess.
        given = {part: getattr(setup, field.name) for part, setup in setups
                 if getattr(setup, field.name) is not field.default}
        if len(given) > 1:
            raise ValueError(f"Methods {sorted(given)} in {name!r} each set MethodSetup."
                             f"{field.name}; kgrow cannot combine them in one run.")
        if given:
            setattr(merged, field.name, next(iter(given.values())))
    return merged


register_method(BASELINE, baseline_factory)
# kgrow's own methods, imported only when used.
register_method("grow_width", "kgrow.callbacks.growth:bench_width_growth")
register_method("grow_width_2", "kgrow.callbacks.growth:bench_width_growth_2")
register_method("grow_depth", "kgrow.callbacks.growth:bench_depth_growth")
# Methods of kgrow.methods packages: each package's bench module lists its lazy factories.
for _package in ("network_expansion", "variance_transfer", "autoprog", "sparse_training",
                 "progressive_freezing", "data_sieving"):
    for _name, _target in importlib.import_module(
            f"kgrow.methods.{_package}.bench").METHODS.items():
        register_method(_name, _target)
