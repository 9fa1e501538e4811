"""The replica's prediction cache: canonical keys, LRU bound, TTL, request-level hit/miss counts."""

from mlscale.serve.cache import PredictionCache, record_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_same_validated_record_in_another_key_order_is_the_same_key():
    assert record_key({"a": 1, "b": None}) == record_key({"b": None, "a": 1})
    assert record_key({"a": 1}) != record_key({"a": 2})


def test_a_request_is_a_hit_only_when_every_record_is_cached():
    cache = PredictionCache(10, 60)
    keys, found = cache.lookup([{"a": 1}, {"a": 2}])
    assert found is None and cache.misses == 1
    cache.store(keys, [0.1, 0.2])
    assert cache.lookup([{"a": 2}, {"a": 1}])[1] == [0.2, 0.1] and cache.hits == 1
    assert cache.lookup([{"a": 1}, {"a": 3}])[1] is None and cache.misses == 2


def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache = PredictionCache(10, ttl_s=5, clock=clock)
    cache.put("k", 0.5)
    clock.now = 5.0
    assert cache.get("k") == 0.5
    clock.now = 5.1
    assert cache.get("k") is None and len(cache) == 0


def test_the_least_recently_used_entry_goes_first_when_full():
    cache = PredictionCache(2, 60)
    cache.put("a", 1.0)
    cache.put("b", 2.0)
    assert cache.get("a") == 1.0  # a is now the most recent
    cache.put("c", 3.0)
    assert cache.get("b") is None and cache.get("a") == 1.0 and cache.get("c") == 3.0


def test_the_cache_is_bounded_by_bytes_whatever_the_records_hold():
    """Long text in records makes long keys: the byte bound evicts by size where the entry count would not, and a
    record larger than the whole budget is never kept."""
    from mlscale.serve.cache import entry_bytes

    cache = PredictionCache(max_entries=1_000_000, ttl_s=60, max_bytes=200_000)
    for index in range(100):
        cache.put(record_key({"note": "x" * 10_000, "n": index}), float(index))
    assert cache.nbytes <= 200_000 and 10 <= len(cache) < 20
    assert cache.nbytes == sum(entry_bytes(key) for key in cache.entries)
    assert cache.get(record_key({"note": "x" * 10_000, "n": 99})) == 99.0  # the newest stay
    cache.put(record_key({"note": "y" * 300_000}), 1.0)
    assert cache.get(record_key({"note": "y" * 300_000})) is None and cache.nbytes <= 200_000
