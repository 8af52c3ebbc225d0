"""A model file for ``gradwire train``: an MLP for 8x8 digit images (64 features, 10 classes).
A model file defines ``build(seed) -> (gw.Graph, params)``."""

import numpy as np

from gradwire.client.demo import mlp


def build(seed: int = 0, inputs: int = 64, hidden: int = 64, classes: int = 10):
    graph = mlp(inputs, hidden, classes)  # relu hidden layer, logits fetchable as "logits"
    rng = np.random.default_rng(seed)
    params = {  # He init for the relu layer, Glorot-like for the logits
        "w1": (rng.normal(size=(inputs, hidden)) * np.sqrt(2 / inputs)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.normal(size=(hidden, classes)) * np.sqrt(1 / hidden)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }
    return graph, params
