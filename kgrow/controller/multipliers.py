"""Per-group learning-rate multipliers.

A group is named by a rule: the name of a layer (all its variables, nested
ones included) or else a regular expression searched in variable paths
(`layer_name/var_name`). Each rule has a multiplier `m >= 0`.

How it is applied: the optimizer takes its ordinary step for every
variable, then the controller's train step rescales the *update* of each
grouped variable, `w <- w_old + m * (w_new - w_old)`. For optimizers whose
update is linear in the learning rate for a given state (SGD with or
without (Nesterov) momentum, Adam, AdamW with decoupled weight decay,
RMSprop, Adagrad, Lion, ...), this equals running the group with learning
rate `m * lr`. (Scaling the gradient instead would not: Adam is invariant to
the gradient's scale.) With momentum the buffer holds unscaled updates and
`m` multiplies whatever it contributes, so a multiplier that changes over time
acts on the whole buffer at once (like PyTorch param-group learning rates),
not only on new gradients. Weight constraints are applied by the optimizer
before the rescaling, so a constrained group with `m != 1` is no longer
exactly constrained.

Multipliers live in non-trainable scalar variables read by the compiled
step: changing their values (a per-epoch schedule) needs no retrace; changing
the set of rules does.

Example:
    >>> rules = parse_rules({"head": 0.1, r"kernel$": 2.0})
    >>> [r.pattern for r in rules]
    ['head', 'kernel$']
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Mapping

import tensorflow as tf

from kgrow.controller._variables import layer_names, trainable_candidates
from kgrow.controller.component import Component, register_kind

__all__ = ["Rule", "parse_rules", "resolve_rules", "LRGroups"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One LR group: a layer name or a regex over variable paths, and its multiplier."""
    pattern: str
    multiplier: float


def _check_multiplier(key, m) -> float:
    try:
        m = float(m)
    except (TypeError, ValueError):
        raise TypeError(f"LR multiplier for {key!r} must be a number, got {m!r}") from None
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"LR multiplier for {key!r} must be finite and >= 0, got {m}")
    return m


def parse_rules(rules: Mapping[str, float]) -> list[Rule]:
    """Validates `{layer_name_or_regex: multiplier}` into a list of `Rule`."""
    if not isinstance(rules, Mapping):
        raise TypeError("LR multipliers must be a mapping {layer name or path regex: "
                        f"multiplier}}, got {type(rules).__name__}")
    out = []
    for key, m in rules.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"LR multiplier keys must be non-empty strings, got {key!r}")
        try:
            re.compile(key)
        except re.error as err:
            raise ValueError(f"LR multiplier key {key!r} is neither a layer name nor a valid "
                             f"regular expression: {err}") from None
        out.append(Rule(key, _check_multiplier(key, m)))
    return out


def _matches(rule: Rule, path: str, layer_names: set) -> bool:
    if rule.pattern in layer_names:
        return path.startswith(rule.pattern + "/")
    return re.search(rule.pattern, path) is not None


def resolve_rules(rules: list[Rule], paths, layer_names) -> tuple[dict, list[str]]:
    """Assigns variable paths to rules.

    Args:
        rules: parsed rules.
        paths: the variable paths the rules may cover.
        layer_names: names of the model's layers (a rule equal to one of them
            selects that layer's variables, not a regex match).

    Returns:
        `({path: rule index}, [patterns that matched nothing])`.

    Raises:
        ValueError: a variable matches two rules.
    """
    layer_names = set(layer_names)
    assigned, used = {}, set()
    for path in paths:
        hits = [i for i, r in enumerate(rules) if _matches(r, path, layer_names)]
        if len(hits) > 1:
            raise ValueError(
                f"Variable {path!r} matches several LR-multiplier rules "
                f"{[rules[i].pattern for i in hits]}; make the rules disjoint.")
        if hits:
            assigned[path] = hits[0]
            used.add(hits[0])
    unused = [r.pattern for i, r in enumerate(rules) if i not in used]
    return assigned, unused


@register_kind
class LRGroups(Component):
    """Component: per-group LR multipliers (`controller.set_lr_multipliers`).

    The multipliers are scalar variables read by the compiled step. After a
    growth step or an architecture taken back, the rules are resolved again
    against the new variable paths (rules that match nothing any more stay
    registered, with a warning); `reset=True` drops every group.
    Checkpoints hold `[[pattern, multiplier], ...]`.
    """

    kind = "lr_groups"
    order = 40
    builtin = True

    def __init__(self):
        self.rules: list[Rule] = []
        self.values: list = []
        self.assignment: dict[str, int] = {}

    def _resolve(self, rules):
        model = self.host.model
        return resolve_rules(rules, [v.path for v in trainable_candidates(model)],
                             layer_names(model))

    def set(self, multipliers: Mapping[str, float]) -> None:
        rules = parse_rules(multipliers)
        if [r.pattern for r in rules] == [r.pattern for r in self.rules]:
            for var, rule in zip(self.values, rules):
                var.assign(rule.multiplier)
            self.rules = rules
            return
        assignment, unused = self._resolve(rules)
        if unused:
            raise ValueError(f"LR-multiplier rules {unused} match no trainable variable; "
                             "a key is a layer name or a regex searched in variable paths "
                             f"such as {[v.path for v in self.host.model.trainable_weights][:6]}.")
        with self.host.scope():
            self.values = [tf.Variable(r.multiplier, trainable=False, dtype=tf.float32,
                                       name=f"kgrow_lr_multiplier_{i}")
                           for i, r in enumerate(rules)]
        self.rules, self.assignment = rules, assignment
        self.host.request_retrace()

    @property
    def multipliers(self) -> dict:
        return {r.pattern: float(v.numpy()) for r, v in zip(self.rules, self.values)}

    def _reresolve(self) -> None:
        if not self.rules:
            return
        rules = [Rule(r.pattern, float(v.numpy())) for r, v in zip(self.rules, self.values)]
        self.assignment, unused = self._resolve(rules)
        if unused:
            warnings.warn(f"LR-multiplier rules {unused} match no trainable variable of the "
                          "changed model; they stay registered but have no effect.",
                          stacklevel=4)

    def carry(self, plan, reset: bool) -> None:
        if reset:
            self.set_state([])
        else:
            self._reresolve()

    def rebuild(self, snapshot) -> None:
        self._reresolve()

    def get_state(self):
        return [[r.pattern, float(v.numpy())] for r, v in zip(self.rules, self.values)]

    def set_state(self, state, custom_objects=None) -> None:
        had = bool(self.rules)
        self.rules, self.values, self.assignment = [], [], {}
        if state:
            self.set(dict(state))
        elif had:
            self.host.request_retrace()

    def update_scales(self, variables) -> list:
        return [(v, self.values[self.assignment[v.path]]) for v in variables
                if v.path in self.assignment]
