"""Optimizers as pure update rules: ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``. No hidden state, so the same rule runs
server-side in training jobs (where its state is checkpointed) and client-side in a user's
loop with ``gw.local()`` or ``gw.connect()``. Updates follow PyTorch's ``torch.optim``
formulas step for step (tests compare in float64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        _check_positive(self, "lr")
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


@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False  # AdamW: decay the weights directly instead of adding L2 to g

    def __post_init__(self):
        _check_positive(self, "lr")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps < 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0")

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


def AdamW(lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``."""
    return Adam(lr, betas, eps, weight_decay, decoupled=True)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def to_config(opt) -> dict:
    """A plain description (JSON- and wire-safe) of an optimizer."""
    name = "adamw" if isinstance(opt, Adam) and opt.decoupled else type(opt).__name__.lower()
    config = asdict(opt)
    config.pop("decoupled", None)
    return {"name": name, **config}


def from_config(config: dict):
    """The optimizer a config describes; ``ValueError`` naming any unknown setting."""
    config = dict(config)
    name = str(config.pop("name", "")).lower()
    factory = {"sgd": SGD, "adam": Adam, "adamw": AdamW}.get(name)
    if factory is None:
        raise ValueError(f"unknown optimizer {name!r}; expected sgd, adam or adamw")
    allowed = {"sgd": {"lr", "momentum", "weight_decay", "nesterov"},
               "adam": {"lr", "betas", "eps", "weight_decay"},
               "adamw": {"lr", "betas", "eps", "weight_decay"}}[name]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; allowed: {sorted(allowed)}")
    if "lr" not in config:
        raise ValueError(f"{name}: lr is required")
    return factory(**config)


def _check_positive(opt, field: str) -> None:
    if not getattr(opt, field) > 0:
        raise ValueError(f"{type(opt).__name__}: {field} must be > 0, got {getattr(opt, field)}")
