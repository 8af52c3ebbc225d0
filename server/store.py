"""Registered graphs (by content hash) and sessions (parameters kept on the server), each
owned by tenants: another tenant's graph or session is NOT_FOUND with the very message of an
id that does not exist."""

from __future__ import annotations

import itertools
import secrets
import threading
from dataclasses import dataclass, field

import numpy as np

from ..protos import gradwire_pb2 as pb
from .auth import DEFAULT_TENANT
from .status import NotFound
from ..worker.codec import graph_from_proto, graph_id_of_proto
from ..worker.engine import Program
from ..worker.lru import LruCache
from ..worker.validate import GraphError, Limits


@dataclass(frozen=True)
class Registered:
    graph_id: str
    program: Program
    proto_bytes: bytes  # what a remote worker needs to rebuild the program
    # the tenants that registered it (a content hash: the same graph may be several tenants'),
    # changed only under its GraphStore's lock
    owners: set[str] = field(default_factory=set, compare=False, repr=False)


class GraphStore:
    """Validated programs by graph id, least recently used evicted beyond ``capacity``. A
    graph id is found only by the tenants that registered that graph."""

    def __init__(self, limits: Limits, capacity: int):
        self.limits = limits
        self._items: LruCache[str, Registered] = LruCache(capacity)
        self._lock = threading.Lock()  # a lookup and the change of its owners are one step

    def register(self, graph: pb.Graph, tenant: str = DEFAULT_TENANT) -> Registered:
        graph_id = graph_id_of_proto(graph)
        with self._lock:
            hit = self._items.get(graph_id)
            if hit is not None:
                hit.owners.add(tenant)
                return hit
        # validated outside the lock: a 100k-node graph must not stall other requests
        made = Registered(graph_id, Program(graph_from_proto(graph, self.limits), self.limits),
                          graph.SerializeToString(deterministic=True))
        with self._lock:
            hit = self._items.get(graph_id)  # made meanwhile by another registration: keep that one
            if hit is None:
                hit = self._items.put(graph_id, made)
            hit.owners.add(tenant)
            return hit

    def __len__(self) -> int:
        return len(self._items)

    def get(self, graph_id: str, tenant: str = DEFAULT_TENANT) -> Registered:
        with self._lock:
            hit = self._items.get(graph_id)
            owned = hit is not None and tenant in hit.owners
        if not owned:  # another tenant's graph: the same answer as an unknown id
            raise NotFound(f"unknown graph id {graph_id!r}; register the graph first")
        return hit


@dataclass
class Session:
    session_id: str
    graph: Registered
    # (params, version), replaced whole on update: one read gives a consistent pair, which
    # matters because workers cache parameters by version
    snapshot: tuple[dict[str, np.ndarray], int]
    tenant: str = DEFAULT_TENANT  # its owner: other tenants get NOT_FOUND

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.snapshot[0]

    @property
    def version(self) -> int:
        return self.snapshot[1]


class SessionStore:
    def __init__(self, capacity: int):
        self.capacity = capacity
        # sessions pushed out by newer ones, remembered (id -> tenant) so their owner is told why
        self._evicted: LruCache[str, str] = LruCache(64 * capacity)
        self._items: LruCache[str, Session] = LruCache(capacity, on_evict=lambda sid, s: self._evicted.put(sid, s.tenant))
        self._update_lock = threading.Lock()  # an update reads and replaces a snapshot
        self._versions = itertools.count(1)

    def __len__(self) -> int:
        return len(self._items)

    def create(self, graph: Registered, params: dict[str, np.ndarray], tenant: str = DEFAULT_TENANT) -> Session:
        check_params(graph.program, params, partial=False)
        session = Session(new_id("s-"), graph, (dict(params), next(self._versions)), tenant)
        return self._items.put(session.session_id, session)

    def get(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        session = self._items.get(session_id)
        if session is None and self._evicted.get(session_id) == tenant:
            raise NotFound(f"session {session_id!r} was evicted: the server keeps its {self.capacity} most recently "
                           "used sessions (--max-sessions); create it again")
        if session is None or session.tenant != tenant:  # another tenant's: as if it did not exist
            raise NotFound(f"unknown session id {session_id!r}")
        return session

    def update(self, session_id: str, params: dict[str, np.ndarray], tenant: str = DEFAULT_TENANT) -> Session:
        session = self.get(session_id, tenant)
        check_params(session.graph.program, params, partial=True)
        with self._update_lock:
            session.snapshot = ({**session.params, **params}, next(self._versions))
        return session

    def close(self, session_id: str, tenant: str = DEFAULT_TENANT) -> None:
        self.get(session_id, tenant)  # never another tenant's
        if self._items.pop(session_id) is None:
            raise NotFound(f"unknown session id {session_id!r}")


def new_id(prefix: str) -> str:
    """A session or job id: 128 random bits, so ids cannot be guessed (ownership is checked too)."""
    return prefix + secrets.token_hex(16)


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
