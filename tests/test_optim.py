"""Optimizers: pure update rules, step for step equal to torch.optim in float64."""

from __future__ import annotations

import numpy as np
import pytest

import gradwire as gw
from gradwire.worker.optim import from_config, to_config

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
]


def _ours(name, settings):
    return getattr(gw.optim, name)(**settings)


@pytest.mark.parametrize("name,settings", CASES)
def test_matches_torch_step_for_step(name, settings):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = getattr(torch.optim, name)(list(tparams.values()), **settings)
    opt = _ours(name, settings)
    state = opt.init(params)
    for _ in range(6):
        grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        topt.step()
        params, state = opt.update(params, grads, state)
        for k in params:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_update_is_pure_and_keeps_dtype():
    params = {"w": np.ones((2, 2), np.float32)}
    grads = {"w": np.full((2, 2), 0.5, np.float32)}
    opt = gw.optim.Adam(lr=0.1)
    state = opt.init(params)
    new, new_state = opt.update(params, grads, state)
    assert new["w"].dtype == np.float32
    assert (params["w"] == 1).all() and state["step"] == 0  # inputs untouched
    assert new_state["step"] == 1 and not np.array_equal(new["w"], params["w"])


def test_usable_in_a_client_side_loop():
    g = gw.Graph()
    x = g.input("x", (None, 2), "float64")
    w = g.param("w", (2,), "float64")
    g.set_loss(gw.mean(gw.square(x * w - 1.0)))
    params = {"w": np.zeros(2)}
    opt = gw.optim.SGD(lr=0.2, momentum=0.5)
    state = opt.init(params)
    engine = gw.local()
    first = None
    for _ in range(30):
        loss, grads = engine.value_and_grad(g, params, {"x": np.ones((4, 2))})
        first = loss if first is None else first
        params, state = opt.update(params, grads, state)
    assert loss < first * 1e-3


@pytest.mark.parametrize("name,settings", CASES)
def test_config_round_trip(name, settings):
    opt = _ours(name, settings)
    assert from_config(to_config(opt)) == opt


@pytest.mark.parametrize("config,message", [
    ({"name": "rmsprop", "lr": 1}, "unknown optimizer 'rmsprop'"),
    ({"name": "adam", "lr": 1e-3, "momentum": 0.9}, r"unknown adam setting\(s\) \['momentum'\]"),
    ({"name": "sgd"}, "lr is required"),
    ({"name": "sgd", "lr": -1.0}, "lr must be > 0"),
    ({"name": "adam", "lr": 1e-3, "betas": [0.9, 1.5]}, "betas must be two numbers"),
])
def test_bad_configs_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        from_config(config)


# ---------------------------------------------------------------- one registry


@pytest.fixture
def registered_rmsprop():
    """A new optimizer added the one way there is: a registered dataclass in gw.optim's table."""
    from dataclasses import dataclass

    from gradwire.worker import optim

    @optim.optimizer("rmsprop")
    @dataclass(frozen=True)
    class RMSprop:
        lr: float = 1e-2
        alpha: float = 0.99
        centered: bool = False

        def init(self, params):
            return {"step": 0, "square": {k: np.zeros_like(v) for k, v in params.items()}}

        def update(self, params, grads, state):
            square = {k: self.alpha * state["square"][k] + (1 - self.alpha) * grads[k] ** 2 for k in params}
            return ({k: p - self.lr * grads[k] / (np.sqrt(square[k]) + 1e-8) for k, p in params.items()},
                    {"step": state["step"] + 1, "square": square})

    yield RMSprop
    del optim.OPTIMIZERS["rmsprop"]


def test_a_registered_optimizer_reaches_configs_jobs_and_the_command_line(registered_rmsprop):
    from gradwire.cli.train import make_optimizer, train_parser
    from gradwire.worker.optim import optimizer_from_json, settings

    assert settings("rmsprop") == {"lr": "number", "alpha": "number", "centered": "bool"}
    opt = registered_rmsprop(lr=0.1, alpha=0.9, centered=True)
    assert to_config(opt) == {"name": "rmsprop", "lr": 0.1, "alpha": 0.9, "centered": True}
    assert from_config(to_config(opt)) == opt
    assert optimizer_from_json('{"name": "rmsprop", "lr": 0.1, "alpha": 0.5}')["alpha"] == 0.5
    with pytest.raises(gw.GraphError, match="rmsprop: centered must be true or false"):
        optimizer_from_json('{"name": "rmsprop", "lr": 0.1, "centered": 1}')
    args = train_parser().parse_args(["--model", "m.py", "--data", "d.npz", "--optimizer", "rmsprop", "--alpha", "0.5", "--centered"])
    assert make_optimizer(args) == registered_rmsprop(lr=1e-3, alpha=0.5, centered=True)


def test_every_registered_optimizer_round_trips_through_json_and_the_command_line():
    import json

    from gradwire.cli.train import make_optimizer, train_parser
    from gradwire.worker.optim import OPTIMIZERS, optimizer_from_json

    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
    for name, cls in OPTIMIZERS.items():
        opt = cls(lr=0.25)
        assert from_config(optimizer_from_json(json.dumps(to_config(opt)))) == opt
        assert make_optimizer(train_parser().parse_args(["--model", "m.py", "--data", "d.npz", "--optimizer", name, "--lr", "0.25"])) == opt
    assert gw.optim.AdamW(lr=0.1).weight_decay == 0.01 and "decoupled" not in to_config(gw.optim.AdamW(lr=0.1))


def test_an_optimizer_whose_settings_cannot_be_read_is_refused_at_registration():
    from dataclasses import dataclass

    from gradwire.worker import optim

    with pytest.raises(TypeError, match="settings need an lr"):
        @optim.optimizer("nolr")
        @dataclass(frozen=True)
        class NoLr:
            steps: int = 1
    assert "nolr" not in optim.OPTIMIZERS
