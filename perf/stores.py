"""The caches a user would put behind fraiseshm instead of the shared arena, for perf/run.py.

Both have the Arena methods fraiseshm/service.py calls (get, get_stale, put, current_seq,
invalidate, flush, incr, observe, close) and the same tag semantics: an entry
is served only if every tag it depends on was last invalidated at a sequence
<= the entry's fill_seq (read before the database was queried), and only if
it was filled after the last flush. Neither needs the arena or the gunicorn
master, so perf/alt_app.py can run them under plain `gunicorn -k asgi`.

- LocalStore: what a user writes first. A per-worker cachetools LRU with a
  per-entry TTL; a mutation invalidates the cache of the worker that ran it,
  and only that one: the other workers keep serving what they hold.
- RedisStore: what a user picks next. One redis-server shared by every worker;
  entries are hashes (value, fill_seq, deps) with a TTL, tag sequences live in
  one hash, and get / put / invalidate are each one Lua script (one round trip).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cachetools import TLRUCache


class LocalStore:
    """Per-worker LRU + TTL; cascade invalidation reaches this worker only."""

    def __init__(self, maxsize: int = 10_000, timer: Callable[[], float] = time.monotonic) -> None:
        # (value, deps, fill_seq, ttl); TLRUCache expires each entry at now + its own ttl
        self._cache: TLRUCache[bytes, tuple[bytes, tuple[str, ...], int, float]] = TLRUCache(
            maxsize, ttu=lambda _key, entry, now: now + entry[3], timer=timer
        )
        self._tags: dict[str, int] = {}
        self._seq = 0
        self._flushed = 0

    def get(self, key: bytes) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        value, deps, fill_seq, _ttl = entry
        if fill_seq < self._flushed or any(self._tags.get(t, 0) > fill_seq for t in deps):
            self._cache.pop(key, None)
            return None
        return value

    def get_stale(self, key: bytes) -> bytes | None:
        return None  # no stale-while-revalidate: an expired entry is gone

    def put(self, key: bytes, value: bytes, deps: Sequence[str], fill_seq: int, ttl: float) -> bool:
        if fill_seq < self._flushed or any(self._tags.get(t, 0) > fill_seq for t in deps):
            return False  # a mutation ran while this miss was at the database
        self._cache[key] = (value, tuple(deps), fill_seq, ttl)
        return True

    def current_seq(self) -> int:
        return self._seq

    def invalidate(self, tags: Iterable[str]) -> int:
        self._seq += 1
        for tag in tags:
            self._tags[tag] = self._seq
        return self._seq

    def flush(self) -> int:
        self._seq += 1
        self._flushed = self._seq
        return self._seq

    def incr(self, counter: Any, n: int = 1) -> None:
        pass

    def observe(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        self._cache.clear()


# KEYS: entry, tags hash, flush seq
_GET = """
local e = redis.call('HMGET', KEYS[1], 'v', 's', 'd')
if not e[1] then return false end
local s = tonumber(e[2])
if s < tonumber(redis.call('GET', KEYS[3]) or '0') then return false end
if e[3] ~= '' then
  local deps = {}
  for t in string.gmatch(e[3], '[^\\n]+') do deps[#deps + 1] = t end
  local seqs = redis.call('HMGET', KEYS[2], unpack(deps))
  for i = 1, #seqs do
    if seqs[i] and tonumber(seqs[i]) > s then return false end
  end
end
return e[1]
"""

# KEYS: entry, tags hash, flush seq; ARGV: value, fill_seq, deps joined by \\n, ttl ms
_PUT = """
local s = tonumber(ARGV[2])
if s < tonumber(redis.call('GET', KEYS[3]) or '0') then return 0 end
if ARGV[3] ~= '' then
  local deps = {}
  for t in string.gmatch(ARGV[3], '[^\\n]+') do deps[#deps + 1] = t end
  local seqs = redis.call('HMGET', KEYS[2], unpack(deps))
  for i = 1, #seqs do
    if seqs[i] and tonumber(seqs[i]) > s then return 0 end
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: seq, tags hash; ARGV: tags
_INVALIDATE = """
local seq = redis.call('INCR', KEYS[1])
for i = 1, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], seq) end
return seq
"""

# KEYS: seq, flush seq
_FLUSH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], seq)
return seq
"""


class RedisStore:
    """One redis-server for every worker; the same tag validation as the arena, in Lua."""

    def __init__(self, url: str, prefix: str = "fs:") -> None:
        import redis

        # PERF: the synchronous client: GraphQLService calls its store without await,
        # so each call blocks this worker's event loop for one loopback round trip.
        self._r = redis.Redis.from_url(url)
        self._entry = prefix + "e:"
        self._tags, self._seq, self._flush = prefix + "tags", prefix + "seq", prefix + "flush"
        self._get = self._r.register_script(_GET)
        self._put = self._r.register_script(_PUT)
        self._inv = self._r.register_script(_INVALIDATE)
        self._fl = self._r.register_script(_FLUSH)

    def get(self, key: bytes) -> bytes | None:
        return self._get(keys=[self._entry + key.hex(), self._tags, self._flush])  # type: ignore[no-any-return]

    def get_stale(self, key: bytes) -> bytes | None:
        return None  # no stale-while-revalidate: redis expires the entry

    def put(self, key: bytes, value: bytes, deps: Sequence[str], fill_seq: int, ttl: float) -> bool:
        args = [value, fill_seq, "\n".join(deps), max(1, int(ttl * 1000))]
        return bool(self._put(keys=[self._entry + key.hex(), self._tags, self._flush], args=args))

    def current_seq(self) -> int:
        return int(self._r.get(self._seq) or 0)

    def invalidate(self, tags: Iterable[str]) -> int:
        return int(self._inv(keys=[self._seq, self._tags], args=list(tags)))

    def flush(self) -> int:
        return int(self._fl(keys=[self._seq, self._flush]))

    def incr(self, counter: Any, n: int = 1) -> None:
        pass

    def observe(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        self._r.close()
