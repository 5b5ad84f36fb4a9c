"""Model names for ``kgrow.models.get``.

Each name maps to a builder plus keyword arguments. ``fixed`` arguments are
part of the name (``resnet56`` fixes ``depth=56``) and cannot be passed again;
``defaults`` are preset values that may be overridden (``vit_base`` defaults
to 12 blocks, and ``get("vit_base", ..., depth=6)`` is the half-depth start of
Network Expansion).
"""
import dataclasses
import difflib
import inspect

from kgrow.models.resnet import IMAGENET_LAYOUTS, resnet_cifar, resnet_imagenet
from kgrow.models.vit import VIT_PRESETS, vit

#: Builder arguments that ``get`` sets itself (``name`` becomes the model name).
_POSITIONAL = ("input_shape", "num_classes", "name")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered name: its builder and preset keyword arguments."""

    builder: object
    fixed: dict
    defaults: dict
    description: str

    def accepted_kwargs(self):
        """Keyword arguments a caller of ``get`` may pass for this name."""
        params = inspect.signature(self.builder).parameters
        return sorted(p for p in params if p not in _POSITIONAL and p not in self.fixed)


_REGISTRY = {}


def register(name, builder, *, fixed=None, defaults=None, description=""):
    """Adds a model name usable with ``get``.

    Args:
        name: The new name; must not be registered yet.
        builder: ``builder(input_shape=..., num_classes=..., **kwargs) -> keras.Model``.
        fixed: Keyword arguments implied by the name (callers cannot pass them).
        defaults: Keyword arguments callers may override.
        description: One line shown by ``available(details=True)``.

    Example:
        >>> from kgrow.models import resnet_cifar
        >>> register("resnet8_demo", resnet_cifar, fixed={"depth": 8},
        ...          description="tiny demo")
        >>> "resnet8_demo" in available()
        True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Model name must be a non-empty string, got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(f"Model name {name!r} is already registered.")
    params = inspect.signature(builder).parameters
    for key in {**(fixed or {}), **(defaults or {})}:
        if key not in params:
            raise ValueError(f"{getattr(builder, '__name__', builder)} has no argument "
                             f"{key!r}; it accepts {sorted(params)}.")
    _REGISTRY[name] = ModelSpec(builder, dict(fixed or {}), dict(defaults or {}),
                                description)


def available(details=False):
    """Registered model names, sorted.

    Args:
        details: Return ``{name: description}`` instead of a list.

    Example:
        >>> "resnet20" in available() and "vit_tiny" in available()
        True
    """
    names = sorted(_REGISTRY)
    if details:
        return {n: _REGISTRY[n].description for n in names}
    return names


def spec(name):
    """The ``ModelSpec`` registered under ``name`` (clear error if unknown)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Supported models: "
                         f"{available()}.")
    return _REGISTRY[name]


def get(name, input_shape, num_classes, **kwargs):
    """Builds a registered model.

    Args:
        name: One of ``available()``, e.g. ``"resnet20"``, ``"resnet50"``,
            ``"vit_tiny"``, ``"vit"``.
        input_shape: ``(height, width, channels)`` without the batch axis.
        num_classes: Number of classes of the head.
        **kwargs: Builder arguments (e.g. ``width``, ``widen``, ``stem``,
            ``patch_size``, ``depth`` for ViT presets); an argument the model
            does not accept raises a ``ValueError`` that lists the accepted ones.

    Returns:
        An uncompiled Functional ``keras.Model``. Its Keras name is the
        registered name; it cannot be renamed here because ``name`` is this
        function's first argument (call the builder directly for another name).

    Example:
        >>> model = get("resnet20", (28, 28, 1), 10, width=0.25)
        >>> model.name, model.output_shape
        ('resnet20', (None, 10))
    """
    entry = spec(name)
    clash = sorted(set(kwargs) & set(entry.fixed))
    if clash:
        raise ValueError(f"{clash} {'is' if len(clash) == 1 else 'are'} fixed by the "
                         f"model name {name!r} ({entry.fixed}); call "
                         f"{entry.builder.__name__}(...) directly to choose "
                         f"{'it' if len(clash) == 1 else 'them'}.")
    accepted = entry.accepted_kwargs()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"Model {name!r} does not accept {unknown}; accepted "
                         f"arguments: {accepted}.")
    merged = {**entry.defaults, **kwargs}
    return entry.builder(input_shape=input_shape, num_classes=num_classes,
                         name=name, **entry.fixed, **merged)


def _register_builtin():
    for depth in (20, 32, 44, 56, 110):
        register(f"resnet{depth}", resnet_cifar, fixed={"depth": depth},
                 description=f"CIFAR ResNet-{depth}, basic blocks, 16/32/64 filters")
    register("resnet_cifar", resnet_cifar,
             description="CIFAR ResNet of any depth 6n+2 (pass depth=...)")
    for depth, (block, _) in sorted(IMAGENET_LAYOUTS.items()):
        register(f"resnet{depth}", resnet_imagenet, fixed={"depth": depth},
                 description=f"ImageNet ResNet-{depth}, {block} blocks, 64-512 filters")
    register("resnet_imagenet", resnet_imagenet,
             description=f"ImageNet ResNet (pass depth= one of {sorted(IMAGENET_LAYOUTS)})")
    for preset, size in VIT_PRESETS.items():
        register(preset, vit, fixed={"dim": size["dim"], "heads": size["heads"]},
                 defaults={"depth": size["depth"]},
                 description=f"ViT/DeiT dim {size['dim']}, {size['heads']} heads, "
                             f"depth {size['depth']} by default")
    register("vit", vit, description="ViT with free depth, dim, heads, mlp_ratio, "
                                     "patch_size")


_register_builtin()
