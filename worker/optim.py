"""Optimizers as pure update rules: ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``. No hidden state, so the same rule runs
server-side in training jobs (where its state is checkpointed) and client-side in a user's
loop with ``gw.local()`` or ``gw.connect()``. Updates follow PyTorch's ``torch.optim``
formulas step for step (tests compare in float64).

One registry: an optimizer is a frozen dataclass registered with ``@optimizer("name")``. Its
settings (a wire config's keys, their kinds, the flags of ``gradwire train``) are read from
its fields, so adding one touches this file only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

import numpy as np

from .validate import GraphError

Arrays = dict[str, np.ndarray]

OPTIMIZERS: dict[str, type] = {}  # name (as in a config and on the command line) -> class
# a field's annotation -> the kind of value a config gives it
_KINDS = {"float": "number", "bool": "bool", "tuple[float, float]": "pair"}


def optimizer(name: str):
    """Register a frozen dataclass as the optimizer ``name``; its init fields are its settings."""
    def register(cls):
        kinds = {f.name: _KINDS.get(f.type) for f in fields(cls) if f.init}
        if None in kinds.values() or "lr" not in kinds:
            raise TypeError(f"optimizer {name}: settings need an lr and annotations among {sorted(_KINDS)}")
        cls.NAME = name
        OPTIMIZERS[name] = cls
        return cls
    return register


def settings(name: str) -> dict[str, str]:
    """The settings of a registered optimizer and their kinds ("number", "bool", "pair")."""
    return {f.name: _KINDS[f.type] for f in fields(OPTIMIZERS[name]) if f.init}


@optimizer("sgd")
@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        _check_positive(self, "lr")
        _check_non_negative(self, "momentum", "weight_decay")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("SGD: nesterov needs momentum > 0")

    def init(self, params: Arrays) -> dict:
        return {"step": 0, "momentum": {}}

    def update(self, params: Arrays, grads: Arrays, state: dict) -> tuple[Arrays, dict]:
        new_params, buffers = {}, {}
        for name, p in params.items():
            d = grads[name] + self.weight_decay * p if self.weight_decay else grads[name]
            if self.momentum:
                prev = state["momentum"].get(name)
                buf = d.copy() if prev is None else self.momentum * prev + d
                buffers[name] = buf
                d = d + self.momentum * buf if self.nesterov else buf
            new_params[name] = (p - self.lr * d).astype(p.dtype, copy=False)
        return new_params, {"step": state["step"] + 1, "momentum": buffers}


@optimizer("adam")
@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = field(default=False, init=False, repr=False)  # AdamW's: not a setting

    def __post_init__(self):
        _check_positive(self, "lr")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), got {self.betas}")
        _check_non_negative(self, "eps", "weight_decay")

    def init(self, params: Arrays) -> dict:
        return {"step": 0,
                "m": {k: np.zeros_like(v) for k, v in params.items()},
                "v": {k: np.zeros_like(v) for k, v in params.items()}}

    def update(self, params: Arrays, grads: Arrays, state: dict) -> tuple[Arrays, dict]:
        b1, b2 = self.betas
        step = state["step"] + 1
        correction1, correction2 = 1 - b1 ** step, 1 - b2 ** step
        new_params, ms, vs = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and self.decoupled:
                p = p * (1 - self.lr * self.weight_decay)
            elif self.weight_decay:
                g = g + self.weight_decay * p
            m = b1 * state["m"][name] + (1 - b1) * g
            v = b2 * state["v"][name] + (1 - b2) * (g * g)
            denom = np.sqrt(v) / np.sqrt(correction2) + self.eps
            new_params[name] = (p - (self.lr / correction1) * (m / denom)).astype(p.dtype, copy=False)
            ms[name], vs[name] = m, v
        return new_params, {"step": step, "m": ms, "v": vs}


@optimizer("adamw")
@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``: the
    weights decay directly instead of adding an L2 term to the gradient."""
    weight_decay: float = 1e-2
    decoupled: bool = field(default=True, init=False, repr=False)


def to_config(opt) -> dict:
    """A plain description (JSON- and wire-safe) of an optimizer."""
    return {"name": opt.NAME, **{key: getattr(opt, key) for key in settings(opt.NAME)}}


# A job's optimizer config arrives as JSON text from a client: bound it before parsing.
MAX_CONFIG_BYTES = 1 << 16


def optimizer_from_json(text: str | bytes) -> dict:
    """The optimizer config a job's JSON text describes, checked as ``from_config`` builds it
    (so building it later cannot fail). ``GraphError`` names any fault: text too long or nested
    too deep, not an object, unknown names or settings, wrong types, non-finite numbers."""
    if len(text) > MAX_CONFIG_BYTES:
        raise GraphError(f"optimizer: config of {len(text)} bytes; the limit is {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(text or "{}", parse_constant=_refuse_constant)
    except GraphError:  # from _refuse_constant
        raise
    except RecursionError:  # json recurses per nesting level
        raise GraphError("optimizer: config is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ints of too many digits
        raise GraphError(f"optimizer: config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise GraphError(f"optimizer: config must be a JSON object, got {type(config).__name__}")
    try:
        from_config(config)
    except (ValueError, TypeError) as exc:
        raise GraphError(f"optimizer: {exc}") from None
    return config


def _refuse_constant(name: str):
    raise GraphError(f"optimizer: non-finite number {name} in the config")


def from_config(config: dict):
    """The optimizer a config describes; ``ValueError`` naming any unknown setting or value
    of the wrong kind."""
    config = dict(config)
    name = config.pop("name", "")
    if not isinstance(name, str):
        raise ValueError(f"optimizer name must be a string, got {name!r}")
    name = name.lower()
    factory = OPTIMIZERS.get(name)
    if factory is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(sorted(OPTIMIZERS))}")
    allowed = settings(name)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; allowed: {sorted(allowed)}")
    if "lr" not in config:
        raise ValueError(f"{name}: lr is required")
    return factory(**{key: _setting(name, key, allowed[key], value) for key, value in config.items()})


def _setting(opt: str, key: str, kind: str, value):
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{opt}: {key} must be true or false, got {value!r}")
        return value
    if kind == "pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{opt}: {key} must be two numbers, got {value!r}")
        return tuple(_number(opt, key, v) for v in value)
    return _number(opt, key, value)


def _number(opt: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{opt}: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range (and too long to print)
        raise ValueError(f"{opt}: {key} must be a finite number, got an integer of {value.bit_length()} bits") from None
    if not math.isfinite(number):
        raise ValueError(f"{opt}: {key} must be a finite number, got {value!r}")
    return number


def _check_positive(opt, field: str) -> None:
    if not getattr(opt, field) > 0:
        raise ValueError(f"{type(opt).__name__}: {field} must be > 0, got {getattr(opt, field)}")


def _check_non_negative(opt, *fields: str) -> None:
    for field in fields:
        if not getattr(opt, field) >= 0:
            raise ValueError(f"{type(opt).__name__}: {field} must be >= 0, got {getattr(opt, field)}")
