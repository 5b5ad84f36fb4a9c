"""Built-in growth initializers: zeros, random, net2net, orthogonal, variance_transfer.

Notation for one channel group grown from ``n`` kept channels to ``n + k``:
``P`` is a producer's filter matrix ``[n, fan_in]`` (one row per channel,
the weights that compute it), ``C`` a consumer's fan-out matrix
``[n, fan_out]`` (the weights that read it). The next layer computes
``y = sum_c h_c * C_c + ...``; a new channel leaves ``y`` unchanged when its
row ``C_c`` is zero, or when its contribution is cancelled by another new
channel. Every method below says when that argument is exact: it breaks when
the channels are normalised together (LayerNorm, GroupNorm, RMS norm, unit
norm, softmax over channels), since the new channels then change the
statistics every channel is divided by.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from kgrow.growth.base import (REPLICATION_SAFE_NORMALIZERS, GrowthInitializer, GrowthRequest,
                               GrowthValues, he_std, register_initializer)

__all__ = ["Zeros", "Random", "Net2Net", "Orthogonal", "VarianceTransfer",
           "orthogonal_filters", "rescale_factor", "compensable_rescale", "RESCALES"]


def _normalized_reason(mixing) -> str:
    return (f"the group is normalized over its channels by {mixing}; new channels change "
            "those statistics")


class Zeros(GrowthInitializer):
    """Random fan-in, zero fan-out.

    New filters are He-normal (``std = sqrt(2 / fan_in)``) so the new channels
    compute something and get gradients; their fan-out rows are zero, so the
    next layers do not see them: ``y' = y + 0``. Exact for every group that is
    not normalised over its channels. New carriers get their defaults
    (BatchNorm gamma 1, beta 0, moving mean 0, variance 1; bias 0).

    Example:
        >>> Zeros().name
        'zeros'
    """

    name = "zeros"

    def new_filters(self, request: GrowthRequest) -> list:
        """Fan-in of the new channels, one `(n_new, fan)` array per producer."""
        return [request.rng.normal(0.0, he_std(s.fan_in), (request.n_new, s.fan))
                for s in request.producers]

    def grow(self, request: GrowthRequest) -> GrowthValues:
        consumers = [np.zeros((request.n_new, s.fan)) for s in request.consumers]
        return GrowthValues(self.new_filters(request), consumers, self.carrier_values(request))

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        mixing = self.mixing(group)
        return _normalized_reason(mixing) if mixing else None


class Random(GrowthInitializer):
    """Random fan-in and fan-out (He or Glorot normal): a fresh start, not exact.

    Args:
        scale: "he" (``std = sqrt(2 / fan_in)``) or "glorot"
            (``std = sqrt(2 / (fan_in + fan_out))`` with ``fan_out`` the slice length).

    Example:
        >>> Random(scale="glorot").scale
        'glorot'
    """

    name = "random"
    SCALES = ("he", "glorot")

    def __init__(self, scale: str = "he"):
        if scale not in self.SCALES:
            raise ValueError(f"Random(scale=...) must be one of {self.SCALES}, got {scale!r}")
        self.scale = scale

    def _std(self, s) -> float:
        if self.scale == "he":
            return he_std(s.fan_in)
        return float(np.sqrt(2.0 / (s.fan_in + s.fan)))

    def grow(self, request: GrowthRequest) -> GrowthValues:
        rng, k = request.rng, request.n_new
        producers = [rng.normal(0.0, self._std(s), (k, s.fan)) for s in request.producers]
        consumers = [rng.normal(0.0, self._std(s), (k, s.fan)) for s in request.consumers]
        return GrowthValues(producers, consumers, self.carrier_values(request))

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        if old_size is not None and new_size is not None and new_size <= old_size:
            return None
        return "new channels have random fan-out weights"


class Net2Net(GrowthInitializer):
    """Copies: each new channel duplicates an existing one (Net2WiderNet).

    A new channel ``c'`` copying ``c`` gets ``P_c' = P_c`` and the same
    carriers (BatchNorm statistics included), so ``h_c' = h_c``; the fan-out
    of ``c`` is split among its ``r`` copies (original included):
    ``C_c -> a_i * C_c`` with ``sum_i a_i = 1``, so ``y`` is unchanged.
    With ``noise = 0`` every ``a_i = 1 / r``; ``noise > 0`` draws
    ``a_i = 1/r + noise * N(0, 1)`` re-centred to sum to 1, which breaks the
    symmetry between copies and stays exact (up to float rounding).

    Copies are chosen so every kept channel is replicated as evenly as
    possible: ``k // n`` copies of each, plus ``k % n`` distinct random ones
    (per block, from the same block). When ``k`` is a multiple of ``n`` each
    channel appears exactly ``(n + k) / n`` times, and the mean, variance and
    mean square over the channels are unchanged, so the growth is exact even
    for groups normalised by LayerNorm, RMS norm or GroupNorm (e.g. 0.5x ->
    1.0x). Softmax and unit norm over channels are never exact.

    Args:
        noise: std of the symmetry-breaking split of the fan-out (exact).
        fan_in_noise: std, relative to each producer's filter std, of noise
            added to copied filters (not exact).

    Example:
        >>> Net2Net(noise=0.01).noise
        0.01
    """

    name = "net2net"

    def __init__(self, noise: float = 0.0, fan_in_noise: float = 0.0):
        for label, v in (("noise", noise), ("fan_in_noise", fan_in_noise)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"Net2Net({label}=...) must be a number >= 0, got {v!r}")
        self.noise = float(noise)
        self.fan_in_noise = float(fan_in_noise)

    @staticmethod
    def sources(request: GrowthRequest) -> np.ndarray:
        """Old channel copied by each new channel (block-major, same local choice per block)."""
        a = request.n_old // request.blocks
        k = request.n_new // request.blocks
        reps, rem = divmod(k, a)
        extra = np.sort(request.rng.choice(a, rem, replace=False)) if rem else np.zeros(0, int)
        local = np.concatenate([np.tile(np.arange(a), reps), extra]).astype(np.int64)
        return np.concatenate([b * a + local for b in range(request.blocks)])

    def _fractions(self, request, src):
        n = request.n_old
        members = np.concatenate([np.arange(n), src])
        counts = np.bincount(members, minlength=n).astype(np.float64)
        frac = 1.0 / counts[members]
        if self.noise:
            frac = frac + self.noise * request.rng.standard_normal(frac.shape)
            excess = (np.bincount(members, weights=frac, minlength=n) - 1.0) / counts
            frac = frac - excess[members]
        return frac[:n], frac[n:]

    def grow(self, request: GrowthRequest) -> GrowthValues:
        src = self.sources(request)
        frac_old, frac_new = self._fractions(request, src)
        producers = []
        for s in request.producers:
            new = s.old[src].copy()
            if self.fan_in_noise:
                new += self.fan_in_noise * s.old.std() * request.rng.standard_normal(new.shape)
            producers.append(new)
        consumers = [s.old[src] * frac_new[:, None] for s in request.consumers]
        return GrowthValues(producers, consumers, self.carrier_values(request, source=src),
                            consumer_scale=frac_old)

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        if self.fan_in_noise:
            return "fan_in_noise makes the copies compute different values"
        bad = self.mixing(group, allowed=REPLICATION_SAFE_NORMALIZERS)
        if bad:
            return _normalized_reason(bad)
        if self.mixing(group):
            if old_size is None or new_size is None:
                return ("the group is normalized over its channels; copies keep the statistics "
                        "only when the new size is a multiple of the kept size")
            if new_size % old_size:
                return (f"the group is normalized over its channels "
                        f"({self.mixing(group)}); {old_size} -> {new_size} cannot replicate "
                        "every channel the same number of times (use a new size that is a "
                        "multiple of the kept size)")
        return None


def orthogonal_filters(existing: np.ndarray, count: int, rng: np.random.Generator,
                       norm: Optional[float] = None) -> np.ndarray:
    """`count` new filters orthogonal to the rows of `existing` and to each other.

    Random vectors are projected out of the span of the existing filters and
    orthonormalised (QR). In ``d`` dimensions only ``d - n`` such vectors
    exist for ``n`` existing filters: the first ``d - n`` new filters are
    orthogonal, the rest are random directions. All are scaled to `norm`
    (default: the mean L2 norm of the existing filters, or the expected norm
    ``sqrt(2)`` of a He-normal filter when the existing ones are all zero).

    Args:
        existing: ``[n, d]`` filters (one per row).
        count: number of new filters.
        rng: a numpy Generator.
        norm: target L2 norm of each new filter.

    Returns:
        ``[count, d]`` array.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> old = rng.normal(size=(3, 8))
        >>> new = orthogonal_filters(old, 4, rng)
        >>> bool(np.allclose(new @ old.T, 0, atol=1e-9))
        True
    """
    existing = np.asarray(existing, dtype=np.float64)
    n, d = existing.shape
    if norm is None:
        norms = np.linalg.norm(existing, axis=1) if n else np.zeros(0)
        norm = float(norms.mean()) if n and norms.mean() > 0 else float(np.sqrt(2.0))
    out = rng.standard_normal((count, d))
    # An orthonormal basis of (a superset of) the existing filters' span: the
    # reduced QR has min(n, d) columns whatever the rank, so rank-deficient
    # filters only make the count of orthogonal new filters conservative.
    basis = np.linalg.qr(existing.T)[0] if n else np.zeros((d, 0))
    free = min(count, d - basis.shape[1])
    if free > 0:
        r = out[:free].T
        for _ in range(2):  # project twice: one pass loses orthogonality in float rounding
            r = r - basis @ (basis.T @ r)
        q, _ = np.linalg.qr(r)
        q = q - basis @ (basis.T @ q)
        out[:free] = q.T
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-300)
    return out * norm


class Orthogonal(Zeros):
    """Network Expansion: new filters orthogonal to the existing ones.

    For every producer each filter is flattened (``k*k*C_in`` for a conv,
    over the *grown* input, so a filter of a layer whose input also grew
    includes its weights for the new input channels); the new filters are
    orthogonal to the existing filters and to each other (see
    `orthogonal_filters`), rescaled to the existing filters' mean norm. They
    are computed again after every group has grown (`final_filters`), so
    the property holds whatever order the groups of a model are grown in.

    The weights that read the new channels (fan-out) are zero by default,
    which keeps the function exactly as `Zeros` does. ``fan_out > 0`` starts
    them as rows orthogonal to the consumers' existing rows with
    ``fan_out`` times their mean norm instead: the new channels then reach
    the loss from the first step, at the price of a small change of the
    function.

    ``rescale`` borrows variance transfer's rescaling (`VarianceTransfer`):
    the old fan-out is multiplied by ``s = sqrt(C_t / C_{t+1})`` ("sqrt") or
    ``C_t / C_{t+1}`` ("linear") in groups whose consumers feed a BatchNorm
    that undoes ``s`` exactly (``ChannelGroup.bn_compensable``), and left
    alone elsewhere, so growth stays exact. Behind a BatchNorm the smaller
    weights train at a larger effective learning rate (the normalized output
    does not depend on their scale, the step does), as the new channels start
    to contribute.

    Args:
        fan_out: norm of the new fan-out rows relative to the existing rows'
            mean norm (0: zero fan-out, function-preserving).
        rescale: None (default), "sqrt" or "linear".

    Example:
        >>> Orthogonal().name, Orthogonal(fan_out=0.01).fan_out
        ('orthogonal', 0.01)
        >>> Orthogonal(rescale="sqrt").rescale
        'sqrt'
    """

    name = "orthogonal"

    def __init__(self, fan_out: float = 0.0, rescale: Optional[str] = None):
        if not isinstance(fan_out, (int, float)) or not 0.0 <= fan_out <= 1.0:
            raise ValueError(f"Orthogonal(fan_out=...) must be a number in [0, 1] (a norm "
                             f"relative to the existing fan-out rows), got {fan_out!r}")
        if rescale not in RESCALES:
            raise ValueError(f"Orthogonal(rescale=...) must be one of {RESCALES}, got "
                             f"{rescale!r}")
        self.fan_out = float(fan_out)
        self.rescale = rescale

    def new_filters(self, request: GrowthRequest) -> list:
        return [orthogonal_filters(s.old, request.n_new, request.rng)
                for s in request.producers]

    final_filters = new_filters

    def grow(self, request: GrowthRequest) -> GrowthValues:
        s = compensable_rescale(self.rescale, request)
        if not self.fan_out:
            values = super().grow(request)
        else:
            consumers = []
            for sl in request.consumers:
                norms = np.linalg.norm(sl.old, axis=1)
                scale = (float(norms.mean()) if norms.size and norms.mean() > 0
                         else he_std(sl.fan_in))
                consumers.append(orthogonal_filters(sl.old, request.n_new, request.rng,
                                                    norm=self.fan_out * scale * s))
            values = GrowthValues(self.new_filters(request), consumers,
                                  self.carrier_values(request))
        if s != 1.0:
            values.consumer_scale = np.full(request.n_old, s)
            values.compensate = s
        return values

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        if self.fan_out:
            return f"new channels start with non-zero fan-out (fan_out={self.fan_out})"
        return super().check(group, old_size, new_size)

    def __repr__(self):
        extra = "" if self.rescale is None else f", rescale={self.rescale!r}"
        return f"Orthogonal(fan_out={self.fan_out}{extra})"


#: Rules for rescaling the old fan-out when a group grows (`rescale_factor`).
RESCALES = (None, "linear", "sqrt")


def rescale_factor(rule: Optional[str], n_old: int, n_total: int) -> float:
    """Variance transfer's factor of the old fan-out when a group grows from
    ``n_old`` to ``n_total`` channels: ``n_old / n_total`` ("linear"), its square
    root ("sqrt"), or 1 (None).

    Example:
        >>> [rescale_factor(rule, 4, 16) for rule in ("sqrt", "linear", None)]
        [0.5, 0.25, 1.0]
    """
    if rule is None:
        return 1.0
    ratio = n_old / n_total
    return ratio if rule == "linear" else float(np.sqrt(ratio))


def compensable_rescale(rule: Optional[str], request: GrowthRequest) -> float:
    """`rescale_factor` where a BatchNorm after every consumer undoes it
    (``ChannelGroup.bn_compensable``), else 1, so the growth stays exact."""
    if not getattr(request.group, "bn_compensable", False):
        return 1.0
    return rescale_factor(rule, request.n_old, request.n_old + request.n_new)


class VarianceTransfer(GrowthInitializer):
    """Paired growth of Yuan et al. (variance transfer), optionally with rescaling.

    New channels come in pairs ``(c1, c2)`` with equal fan-in ``[V; V]`` and
    opposite fan-out ``[Z, -Z]``: ``h_c1 = h_c2``, so their contributions
    ``h_c1 Z - h_c2 Z`` cancel exactly. ``V ~ N(0, 1 / fan_in^2)`` with the
    producer's fan-in (``C_{l-2}`` for a dense layer, ``k*k*C_{l-2}`` for a
    conv) and ``Z ~ N(0, 1 / fan_in'^2)`` with the consumer's fan-in after
    growth (``C_{l-1} + k`` for a dense layer). An odd number of new
    channels (per block) leaves the last one unpaired, with zero fan-out.
    Exact unless the group is normalised over its channels.

    Rescaling (``rescale``): when a layer's fan-in grows from ``C_t`` to
    ``C_{t+1}`` the old fan-out weights are multiplied by
    ``s = C_t / C_{t+1}`` ("linear") or ``s = sqrt(C_t / C_{t+1})`` ("sqrt").
    Neither keeps the function by itself: with the new pairs cancelling, the
    consumer's pre-activation becomes exactly ``s`` times the old one, and in
    a linear network the output is scaled by ``s``. It is exact when every
    consumer reads only this group and feeds a BatchNorm (through ReLU,
    pooling, padding or dropout): `scale_width` then scales the consumer's
    bias by ``s`` and the BatchNorm's moving mean by ``s`` and moving variance
    by ``s^2`` (so its statistics match the rescaled activations) and
    multiplies gamma by ``sqrt(s^2 v + eps) / (s sqrt(v + eps))`` to absorb
    the epsilon; `check` reports this (``ChannelGroup.bn_compensable``).

    Args:
        rescale: None (default), "linear" or "sqrt".
        noise: std, relative to the new fan-in std, of noise added to the
            second member of each pair (breaks the symmetry, not exact).

    Example:
        >>> VarianceTransfer(rescale="sqrt").rescale
        'sqrt'
    """

    name = "variance_transfer"
    RESCALES = RESCALES

    def __init__(self, rescale: Optional[str] = None, noise: float = 0.0):
        if rescale not in self.RESCALES:
            raise ValueError(f"VarianceTransfer(rescale=...) must be one of {self.RESCALES}, "
                             f"got {rescale!r}")
        if not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"VarianceTransfer(noise=...) must be a number >= 0, got {noise!r}")
        self.rescale = rescale
        self.noise = float(noise)

    @staticmethod
    def pairing(request: GrowthRequest):
        """``(prototype, sign)`` per new channel: pair members share a prototype, signs +1/-1.

        An unpaired last channel of a block has sign 0 (zero fan-out).
        """
        k = request.n_new // request.blocks
        pairs, odd = divmod(k, 2)
        local_proto = np.repeat(np.arange(pairs), 2)
        local_sign = np.tile([1.0, -1.0], pairs)
        if odd:
            local_proto = np.append(local_proto, pairs)
            local_sign = np.append(local_sign, 0.0)
        per_block = pairs + odd
        proto = np.concatenate([b * per_block + local_proto for b in range(request.blocks)])
        sign = np.tile(local_sign, request.blocks)
        return proto.astype(np.int64), sign

    def factor(self, n_old: int, n_total: int) -> float:
        """The rescaling factor s of the old fan-out (1.0 without rescaling)."""
        return rescale_factor(self.rescale, n_old, n_total)

    # The scales below are the hooks subclasses change; `grow` keeps the pairing.
    def fan_out_scale(self, request: GrowthRequest) -> float:
        """The factor s applied to the group's old fan-out."""
        return self.factor(request.n_old, request.n_old + request.n_new)

    def producer_std(self, request: GrowthRequest, index: int) -> float:
        """Std of ``V`` for producer ``index``: ``1 / fan_in``."""
        return 1.0 / max(request.producers[index].fan_in, 1)

    def consumer_std(self, request: GrowthRequest, index: int, scale: float) -> float:
        """Std of ``Z`` for consumer ``index``: ``1 / fan_in`` after growth."""
        return 1.0 / max(request.consumers[index].fan_in, 1)

    def new_carriers(self, request: GrowthRequest, prototype: np.ndarray) -> list:
        """Values of the new channels of carried variables (BatchNorm, biases)."""
        return self.carrier_values(request, prototype=prototype)

    def grow(self, request: GrowthRequest) -> GrowthValues:
        rng = request.rng
        proto, sign = self.pairing(request)
        count = int(proto.max()) + 1 if proto.size else 0
        second = np.zeros(len(proto), dtype=bool)
        second[1:] = proto[1:] == proto[:-1]
        s = self.fan_out_scale(request)
        producers = []
        for i, sl in enumerate(request.producers):
            std = self.producer_std(request, i)
            new = rng.normal(0.0, std, (count, sl.fan))[proto]
            if self.noise:
                new[second] += self.noise * std * rng.standard_normal((int(second.sum()), sl.fan))
            producers.append(new)
        consumers = [rng.normal(0.0, self.consumer_std(request, i, s), (count, sl.fan))[proto]
                     * sign[:, None] for i, sl in enumerate(request.consumers)]
        carriers = self.new_carriers(request, proto)
        if s == 1.0:
            return GrowthValues(producers, consumers, carriers)
        return GrowthValues(producers, consumers, carriers,
                            consumer_scale=np.full(request.n_old, s), compensate=s)

    def check(self, group, old_size=None, new_size=None) -> Optional[str]:
        mixing = self.mixing(group)
        if mixing:
            return _normalized_reason(mixing)
        if self.noise:
            return "noise makes the two members of a pair differ, so they no longer cancel"
        if self.rescale is not None and not getattr(group, "bn_compensable", False):
            return (f"rescale={self.rescale!r} multiplies the old fan-out by s < 1, which is only "
                    "undone when every consumer reads only this group and feeds a "
                    "BatchNorm; not the case here")
        return None


for _cls in (Zeros, Random, Net2Net, Orthogonal, VarianceTransfer):
    register_initializer(_cls.name, _cls)
