"""A model file for ``gradwire train``: an MLP for 8x8 digit images (64 features, 10 classes).
A model file defines ``build(seed) -> (gw.Graph, params)``."""

import numpy as np

import gradwire as gw


def build(seed: int = 0, inputs: int = 64, hidden: int = 64, classes: int = 10):
    g = gw.Graph()
    x = g.input("x", shape=(None, inputs))
    y = g.input("y", shape=(None,), dtype="int64")
    w1, b1 = g.param("w1", shape=(inputs, hidden)), g.param("b1", shape=(hidden,))
    w2, b2 = g.param("w2", shape=(hidden, classes)), g.param("b2", shape=(classes,))
    logits = gw.add(gw.relu(x @ w1 + b1) @ w2, b2, name="logits")  # fetchable by name
    g.set_loss(gw.softmax_cross_entropy(logits, y))
    rng = np.random.default_rng(seed)
    params = {  # He init for the relu layer, Glorot-like for the logits
        "w1": (rng.normal(size=(inputs, hidden)) * np.sqrt(2 / inputs)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.normal(size=(hidden, classes)) * np.sqrt(1 / hidden)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }
    return g, params
