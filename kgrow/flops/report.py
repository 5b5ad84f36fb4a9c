"""Result types of :func:`kgrow.flops.count`: per-layer rows and the report."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class LayerFlops:
    """FLOPs per sample of one layer (summed over its calls, if shared).

    Attributes:
        name: layer name; layers of nested models are ``outer/inner``.
        type: layer class name (``ops.Name`` for raw ``keras.ops`` calls).
        forward: forward FLOPs.
        input_grad: FLOPs of the gradient w.r.t. the layer's inputs; 0 when no
            trainable layer lies between the model input and this layer.
        weight_grad: FLOPs of the gradient w.r.t. the layer's trainable weights;
            0 for frozen or weightless layers.
        trainable: the layer has trainable weights.
        density: fraction of the weight-proportional (kernel) FLOPs kept under
            the given sparsity; 1.0 when dense; None for layers without kernels.
        calls: how many times the layer runs per forward pass.

    Example:
        >>> row = LayerFlops("fc", "Dense", 20.0, 20.0, 20.0, True, 1.0)
        >>> row.training
        60.0
    """

    name: str
    type: str
    forward: float
    input_grad: float
    weight_grad: float
    trainable: bool
    density: Optional[float]
    calls: int = 1

    @property
    def training(self) -> float:
        """Forward plus both backward parts: one training step per sample."""
        return self.forward + self.input_grad + self.weight_grad


def format_flops(value: float) -> str:
    """Short human form: ``1.23G``, ``456.00K``, ``12``.

    Example:
        >>> format_flops(1_234_000)
        '1.23M'
    """
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """FLOPs per sample of a model at one input size.

    Attributes:
        per_layer: one :class:`LayerFlops` row per layer, in execution order.
        input_shape: the input shape(s) counted at, without the batch axis.

    Example:
        >>> rows = (LayerFlops("fc", "Dense", 20.0, 0.0, 20.0, True, 1.0),)
        >>> report = FlopsReport(rows, input_shape=(4,))
        >>> report.forward, report.training
        (20.0, 40.0)
    """

    per_layer: tuple
    input_shape: tuple

    @property
    def forward(self) -> float:
        """Forward FLOPs per sample."""
        return float(sum(r.forward for r in self.per_layer))

    @property
    def input_grad(self) -> float:
        return float(sum(r.input_grad for r in self.per_layer))

    @property
    def weight_grad(self) -> float:
        return float(sum(r.weight_grad for r in self.per_layer))

    @property
    def backward(self) -> float:
        """Both backward parts per sample."""
        return self.input_grad + self.weight_grad

    @property
    def training(self) -> float:
        """Forward + backward FLOPs of one training step, per sample."""
        return self.forward + self.backward

    def layer(self, name: str) -> LayerFlops:
        """The row of layer ``name``; raises KeyError naming the known layers."""
        for row in self.per_layer:
            if row.name == name:
                return row
        names = [r.name for r in self.per_layer]
        raise KeyError(f"no layer {name!r} in the report; layers: {names}")

    def to_dict(self) -> dict:
        """Plain-data form (JSON-serializable) for logs and benchmark records."""
        return {
            "input_shape": self.input_shape,
            "forward": self.forward,
            "training": self.training,
            "per_layer": [dict(dataclasses.asdict(r), training=r.training) for r in self.per_layer],
        }

    def table(self) -> str:
        """A text table of the per-layer rows and the totals."""
        header = ("layer", "type", "forward", "input_grad", "weight_grad", "training",
                  "trainable", "density")
        rows = [header]
        for r in self.per_layer:
            rows.append((r.name + (f" (x{r.calls})" if r.calls > 1 else ""), r.type,
                         format_flops(r.forward), format_flops(r.input_grad),
                         format_flops(r.weight_grad), format_flops(r.training),
                         "yes" if r.trainable else "no",
                         "-" if r.density is None else f"{r.density:.3f}"))
        rows.append(("total", "", format_flops(self.forward), format_flops(self.input_grad),
                     format_flops(self.weight_grad), format_flops(self.training), "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        left = {0, 1}

        def fmt(row):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(fmt(header))
        lines = [fmt(header), rule] + [fmt(r) for r in rows[1:-1]] + [rule, fmt(rows[-1])]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
