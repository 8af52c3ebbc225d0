"""Registered graphs (by content hash) and sessions (parameters kept on the server)."""

from __future__ import annotations

import itertools
import threading
import uuid
from dataclasses import dataclass

import numpy as np

from gradwire.protos import gradwire_pb2 as pb
from gradwire.server.status import NotFound
from gradwire.worker.codec import graph_from_proto, graph_id_of_proto
from gradwire.worker.engine import Program
from gradwire.worker.lru import LruCache
from gradwire.worker.validate import GraphError, Limits


@dataclass(frozen=True)
class Registered:
    graph_id: str
    program: Program
    proto_bytes: bytes  # what a remote worker needs to rebuild the program


class GraphStore:
    """Validated programs by graph id, least recently used evicted beyond ``capacity``."""

    def __init__(self, limits: Limits, capacity: int):
        self.limits = limits
        self._items: LruCache[str, Registered] = LruCache(capacity)

    def register(self, graph: pb.Graph) -> Registered:
        graph_id = graph_id_of_proto(graph)
        # validated outside the cache's lock: a 100k-node graph must not stall other requests
        return self._items.get_or_make(graph_id, lambda: Registered(
            graph_id, Program(graph_from_proto(graph, self.limits), self.limits),
            graph.SerializeToString(deterministic=True)))

    def get(self, graph_id: str) -> Registered:
        hit = self._items.get(graph_id)
        if hit is None:
            raise NotFound(f"unknown graph id {graph_id!r}; register the graph first")
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
        self._items: LruCache[str, Session] = LruCache(capacity)
        self._update_lock = threading.Lock()  # an update reads and replaces a snapshot
        self._versions = itertools.count(1)

    def create(self, graph: Registered, params: dict[str, np.ndarray]) -> Session:
        check_params(graph.program, params, partial=False)
        session = Session("s-" + uuid.uuid4().hex, graph, (dict(params), next(self._versions)))
        return self._items.put(session.session_id, session)

    def get(self, session_id: str) -> Session:
        session = self._items.get(session_id)
        if session is None:
            raise NotFound(f"unknown session id {session_id!r}")
        return session

    def update(self, session_id: str, params: dict[str, np.ndarray]) -> Session:
        session = self.get(session_id)
        check_params(session.graph.program, params, partial=True)
        with self._update_lock:
            session.snapshot = ({**session.params, **params}, next(self._versions))
        return session

    def close(self, session_id: str) -> None:
        if self._items.pop(session_id) is None:
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
