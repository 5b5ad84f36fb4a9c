"""Benchmark profiles: named sets of model, data and training settings.

- `quick`: a smoke-scale comparison on this project's 2-core CPU machines
  (baseline + one method in at most ~10 minutes on Fashion-MNIST).
- `standard`: the papers' full-width ResNet-20 (16-32-64 filters) on all 60k
  Fashion-MNIST images, full 10k test set (binomial standard error of an
  accuracy near 92% about 0.27 percentage points), 12 epochs, 2 seeds. Full
  width is where step time follows FLOPs on this CPU (measured with
  `kgrow bench probe`, README "Benchmark"): at half width (the old setting,
  `--model-arg width=0.5 --epochs 5 --seeds 1`) a third of the step is
  fixed overhead and a FLOPs saving barely shows.
- `standard-vit`: a small DeiT-style ViT (patch 4, dim 128, 4 heads, depth 6,
  class token) on the same data, 6 epochs, for depth growth and AutoProg;
  its step time follows FLOPs (measurements at the profile).
- `standard-sparse`: SpFDE's widened ResNet-32 (widen 2: 32-64-128 filters)
  sized to the same time budget (20k images, 6 epochs).
- `paper`, `paper-resnet56`, `paper-deit-s`: the papers' GPU settings,
  documented for reproduction on accelerators; not meant for a CPU.

Every field can be overridden from the command line (`--model`, `--epochs`,
...), see `kgrow bench --help`.

Example:
    >>> from kgrow.bench.profiles import get_profile
    >>> get_profile("quick").dataset
    'fashion_mnist'
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Profile:
    """A named benchmark setting.

    Attributes:
        name: Profile name.
        description: One line shown by `kgrow bench --list-profiles`.
        model: `kgrow.models` name.
        model_kwargs: Extra model builder arguments (e.g. `width`).
        dataset: `kgrow.data` dataset name.
        epochs: Training epochs.
        batch_size: Global batch size.
        subset: Number of training samples used (None: all).
        test_subset: Number of test samples evaluated, the first ones (None:
            the whole test split).
        image_size: Resize images to this (H, W) (None: native size).
        optimizer: `"sgd"` or `"adamw"`.
        lr: Peak learning rate.
        warmup_epochs: Linear warm-up epochs.
        final_lr: Learning rate at the end of the cosine.
        weight_decay: Keras (decoupled) weight decay.
        no_decay: Variable-name patterns without weight decay.
        label_smoothing: Cross-entropy label smoothing.
        augment: `kgrow.data` augmentation preset (None: none).
        budget: Human-readable time budget of baseline + one method.
        seeds: Default number of seeds (`--seeds`); the runs alternate
            baseline, methods, baseline, methods, ... so drift hits all alike.
    """

    name: str
    description: str
    model: str
    dataset: str
    epochs: int
    batch_size: int = 128
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    subset: int | None = None
    test_subset: int | None = None
    image_size: tuple[int, int] | None = None
    optimizer: str = "sgd"
    lr: float = 0.1
    warmup_epochs: float = 0.0
    final_lr: float = 0.0
    weight_decay: float = 5e-4
    no_decay: tuple[str, ...] = ()
    label_smoothing: float = 0.0
    augment: str | None = None
    budget: str = ""
    seeds: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists).

        Example:
            >>> p = get_profile("standard")
            >>> Profile.from_dict(p.to_dict()) == p
            True
        """
        out = dataclasses.asdict(self)
        out["model_kwargs"] = dict(self.model_kwargs)
        out["no_decay"] = list(self.no_decay)
        out["image_size"] = None if self.image_size is None else list(self.image_size)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
        """Inverse of `to_dict`.

        Raises:
            TypeError: Unknown keys (the message lists the allowed ones).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TypeError(f"Unknown profile field(s) {sorted(unknown)}; allowed: "
                            f"{sorted(names)}.")
        values = dict(d)
        values["no_decay"] = tuple(values.get("no_decay", ()))
        if values.get("image_size") is not None:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)


_PROFILES: dict[str, Profile] = {}


def _add(profile: Profile) -> None:
    _PROFILES[profile.name] = profile


# Timings below were measured on the project's 2-core CPU machine; see the
# README for the measured figures.
_add(Profile(
    name="quick",
    description="ResNet-20 at width 0.5 (8-16-32 filters) on 10k Fashion-MNIST training "
                "images (full 10k test set), 5 epochs; checks that everything runs.",
    model="resnet20", model_kwargs={"width": 0.5}, dataset="fashion_mnist",
    subset=10_000, epochs=5, batch_size=128, optimizer="sgd", lr=0.1, warmup_epochs=0.5,
    weight_decay=5e-4, budget="baseline + one method <= 10 min on 2 CPU cores",
))
# 12 epochs (4 per growth stage): a full-width training step of 128 took
# 191 ms on the 2 cores when quiet (`kgrow bench probe --profile standard`)
# and 230-300 ms inside a bench run while shared (`kgrow bench --profile
# standard --epochs 3 --subset 20000`): 1.5-2.3 min per 60k epoch + ~5 s
# evaluation, so baseline (18-28 min) plus width growth (1.37x faster,
# 13-20 min) is ~31-48 min per seed. Measured on the quiet machine (2 seeds,
# benchmarks/results/standard_2seeds): 209 ms per step inside the run, baseline
# 1146 s + 47 s evaluation (93.11%), grow_width 927 s, grow_depth 953 s.
_add(Profile(
    name="standard",
    description="ResNet-20 at full width (16-32-64 filters) on all 60k Fashion-MNIST "
                "training images, full 10k test set, 12 epochs, 2 alternating seeds; "
                "accuracy std err ~0.27 pp.",
    model="resnet20", model_kwargs={}, dataset="fashion_mnist",
    subset=None, epochs=12, batch_size=128, optimizer="sgd", lr=0.1, warmup_epochs=1,
    weight_decay=5e-4, seeds=2,
    budget="baseline + one method ~45 min per seed on 2 CPU cores",
))
# The ViT's step time follows FLOPs on this CPU (`kgrow bench probe --profile
# standard-vit`, shared 2-core machine, batch 128; time / FLOPs relative to
# the full model): width 0.25 0.17/0.07, 0.5 0.37/0.26, 0.75 0.66/0.57; depth
# 2 blocks 0.39/0.33, 4 blocks 0.75/0.67; resolution 16x16 0.38/0.33, 20x20
# 0.53/0.51; fit 50 ms + FLOPs / 118 GFLOP/s, 5.7% rms error; full step 460
# ms. So an epoch is ~3.6 min and 6 epochs keep baseline (~22 min) plus depth
# growth (predicted 1.35x faster, ~16 min) within ~45 min per seed.
_add(Profile(
    name="standard-vit",
    description="DeiT-style ViT (patch 4 -> 7x7 tokens + class token, dim 128, 4 heads, "
                "depth 6) on all 60k Fashion-MNIST images, 6 epochs, AdamW 1e-3 with "
                "1 warm-up epoch, 2 alternating seeds; for depth growth and AutoProg.",
    model="vit", model_kwargs={"patch_size": 4, "dim": 128, "heads": 4, "depth": 6},
    dataset="fashion_mnist", subset=None, epochs=6, batch_size=128, optimizer="adamw",
    lr=1e-3, warmup_epochs=1, final_lr=1e-5, weight_decay=0.05,
    no_decay=("bias", "gamma", "beta", "token", "embeddings"), label_smoothing=0.1,
    seeds=2, budget="baseline + one method ~45 min per seed on 2 CPU cores",
))
# One training step of the widened ResNet-32 (1.27 GFLOPs per sample, 6.7x
# ResNet-20) took a median 1.06 s at batch 128 on the shared machine: 2.8 min
# per 20k epoch, so 6 epochs of baseline (~17 min) plus a method of at most
# the same cost stay within ~45 min per seed with evaluation.
# On the quiet machine (benchmarks/results/standard_sparse, seeds 0 / 1): 1.0 /
# 0.9 s per step, baseline 942 / 822 s + ~100 s evaluation, 91.29 / 91.63%.
_add(Profile(
    name="standard-sparse",
    description="SpFDE's widened ResNet-32 (widen 2: 32-64-128 filters) on 20k Fashion-MNIST "
                "images, full test set, 6 epochs, 2 alternating seeds; for sparse training, "
                "freezing and sieving.",
    model="resnet32", model_kwargs={"widen": 2}, dataset="fashion_mnist",
    subset=20_000, epochs=6, batch_size=128, optimizer="sgd", lr=0.1, warmup_epochs=1,
    weight_decay=5e-4, seeds=2,
    budget="baseline + one method ~40 min per seed on 2 CPU cores",
))
# The papers' settings (GPU). The CIFAR papers use PyTorch SGD with coupled
# weight decay 5e-4 (added to the gradient, inside the momentum); the CIFAR
# ResNet builder reproduces exactly that with its own `weight_decay`
# argument, so the optimizer's decoupled decay is off there.
_add(Profile(
    name="paper",
    description="CIFAR-10 ResNet-20, 160 epochs, SGD 0.1 momentum 0.9, batch 128, cosine "
                "(papers 001/003 setting). GPU only.",
    model="resnet20", model_kwargs={"weight_decay": 5e-4}, dataset="cifar10", epochs=160,
    batch_size=128, optimizer="sgd", lr=0.1, weight_decay=0.0, augment="basic",
    budget="hours on one GPU",
))
_add(Profile(
    name="paper-resnet56",
    description="CIFAR-10 ResNet-56, 160 epochs, SGD 0.1 momentum 0.9, batch 128, cosine. "
                "GPU only.",
    model="resnet56", model_kwargs={"weight_decay": 5e-4}, dataset="cifar10", epochs=160,
    batch_size=128, optimizer="sgd", lr=0.1, weight_decay=0.0, augment="basic",
    budget="hours on one GPU",
))
_add(Profile(
    name="paper-deit-s",
    description="ImageNet-1k (TFDS imagenet2012, downloaded manually) DeiT-S (vit_small), "
                "300 epochs, AdamW 5e-4 x batch/512, wd 0.05 (not on biases, norms, class "
                "token, position embedding), 5 warm-up epochs, cosine to 1e-5, label "
                "smoothing 0.1, drop path 0.1 (papers 000/002 setting). Multi-GPU only.",
    model="vit_small", model_kwargs={"drop_path": 0.1}, dataset="imagenet2012",
    image_size=(224, 224), epochs=300,
    batch_size=1024, optimizer="adamw", lr=1e-3, warmup_epochs=5, final_lr=1e-5,
    weight_decay=0.05, no_decay=("bias", "gamma", "beta", "token", "embeddings"),
    label_smoothing=0.1, augment="deit", budget="days on 8 GPUs",
))


def get_profile(name: str) -> Profile:
    """The profile called `name`.

    Raises:
        KeyError: Unknown profile; the message lists the known ones.
    """
    if name not in _PROFILES:
        raise KeyError(f"Unknown profile {name!r}; available: {', '.join(_PROFILES)}.")
    return _PROFILES[name]


def available_profiles() -> list[str]:
    """Names of the known profiles."""
    return list(_PROFILES)
