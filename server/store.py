"""Registered graphs (by content hash) and sessions (parameters kept on the server)."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gradwire.protos import gradwire_pb2 as pb
from gradwire.server.status import NotFound
from gradwire.worker.codec import graph_from_proto, graph_id_of_proto
from gradwire.worker.engine import Program
from gradwire.worker.validate import GraphError, Limits


@dataclass(frozen=True)
class Registered:
    graph_id: str
    program: Program
    proto_bytes: bytes  # what a remote worker needs to rebuild the program


class GraphStore:
    """Validated programs by graph id, least recently used evicted beyond ``capacity``."""

    def __init__(self, limits: Limits, capacity: int):
        self.limits, self.capacity = limits, capacity
        self._items: OrderedDict[str, Registered] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, graph: pb.Graph) -> Registered:
        graph_id = graph_id_of_proto(graph)
        with self._lock:
            hit = self._items.get(graph_id)
            if hit is not None:
                self._items.move_to_end(graph_id)
                return hit
        # validate outside the lock: a 100k-node graph must not stall other requests
        program = Program(graph_from_proto(graph, self.limits.max_tensor_elements), self.limits)
        item = Registered(graph_id, program, graph.SerializeToString(deterministic=True))
        with self._lock:
            self._items[graph_id] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item

    def get(self, graph_id: str) -> Registered:
        with self._lock:
            hit = self._items.get(graph_id)
            if hit is None:
                raise NotFound(f"unknown graph id {graph_id!r}; register the graph first")
            self._items.move_to_end(graph_id)
            return hit


@dataclass
class Session:
    session_id: str
    graph: Registered
    # (params, version), replaced whole on update: one read gives a consistent pair, which
    # matters because workers cache parameters by version
    snapshot: tuple[dict[str, np.ndarray], int]

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.snapshot[0]

    @property
    def version(self) -> int:
        return self.snapshot[1]


class SessionStore:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._versions = itertools.count(1)

    def create(self, graph: Registered, params: dict[str, np.ndarray]) -> Session:
        check_params(graph.program, params, partial=False)
        session = Session("s-" + uuid.uuid4().hex, graph, (dict(params), next(self._versions)))
        with self._lock:
            self._items[session.session_id] = session
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._items.get(session_id)
            if session is None:
                raise NotFound(f"unknown session id {session_id!r}")
            self._items.move_to_end(session_id)
            return session

    def update(self, session_id: str, params: dict[str, np.ndarray]) -> Session:
        session = self.get(session_id)
        check_params(session.graph.program, params, partial=True)
        with self._lock:
            session.snapshot = ({**session.params, **params}, next(self._versions))
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            if self._items.pop(session_id, None) is None:
                raise NotFound(f"unknown session id {session_id!r}")


def check_params(program: Program, params: dict[str, np.ndarray], partial: bool) -> None:
    declared = program.graph.params
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise GraphError(f"unknown parameter(s) {unknown}; the graph declares {sorted(declared)}")
    missing = sorted(set(declared) - set(params))
    if missing and not partial:
        raise GraphError(f"missing parameter(s) {missing}")
    for name, value in params.items():
        spec = declared[name]
        if value.dtype != spec.dtype or value.shape != spec.shape:
            raise GraphError(f"tensor {name!r} must be {spec}, got {value.dtype.name}{list(value.shape)}")
