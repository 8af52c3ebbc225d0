"""The one LRU cache behind the stores, the Ray driver and workers, and local mode."""

from __future__ import annotations

import threading

from gradwire.worker.lru import LruCache


def test_evicts_the_least_recently_used_entry():
    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    assert cache.pop("a") == 1 and cache.pop("a") is None and len(cache) == 1


def test_get_or_make_makes_once_per_missing_key():
    cache, made = LruCache(4), []
    for _ in range(3):
        assert cache.get_or_make("k", lambda: made.append(1) or "v") == "v"
    assert made == [1]


def test_concurrent_use_keeps_the_bound():
    cache = LruCache(8)

    def hammer(offset):
        for i in range(2000):
            cache.get_or_make((offset, i % 50), lambda: i)

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8
