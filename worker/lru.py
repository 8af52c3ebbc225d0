"""A bounded map that evicts its least recently used entry: the one cache policy of the
graph and session stores, the Ray driver's object refs, the Ray workers' programs and
parameter sets, and local mode's programs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """Every method holds a lock, so concurrent requests can share one cache. Values are
    made outside it (``get_or_make``): validating a big graph must not stall other callers;
    two callers may then make the same missing value, and the later one is kept."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None] | None = None):
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict  # told of each entry pushed out by capacity (not of pops)

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            evicted = [self._items.popitem(last=False) for _ in range(len(self._items) - self.capacity)]
        if self._on_evict is not None:
            for old_key, old_value in evicted:
                self._on_evict(old_key, old_value)
        return value

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        value = self.get(key)
        return self.put(key, make()) if value is None else value

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
