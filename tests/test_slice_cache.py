"""dash_app.volumes.SliceCache: least recently used slices, bounded by bytes."""

import numpy as np

from dash_app.volumes import SliceCache


def test_the_least_recently_used_slices_go_first_once_the_bytes_are_spent():
    cache = SliceCache(capacity_bytes=3000)
    for index in range(3):
        cache.put(("scan", "z", index), np.zeros(1000, np.uint8))
    assert cache.get(("scan", "z", 0)) is not None  # used again: now the most recent
    cache.put(("scan", "z", 3), b"x" * 1000)
    assert cache.get(("scan", "z", 1)) is None
    assert all(cache.get(("scan", "z", index)) is not None for index in (0, 2, 3))


def test_a_slice_larger_than_the_cache_is_not_kept_and_evicts_nothing():
    cache = SliceCache(capacity_bytes=1000)
    cache.put("small", b"x" * 10)
    cache.put("huge", np.zeros(2000, np.uint8))
    assert cache.get("huge") is None and cache.get("small") == b"x" * 10
