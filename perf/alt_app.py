"""fraiseshm with another cache in place of the shared arena, for perf/run.py.

    FRAISESHM_PERF_STORE=local  per-worker cachetools LRU+TTL (perf/stores.py LocalStore)
    FRAISESHM_PERF_STORE=redis  shared redis-server at FRAISESHM_PERF_REDIS_URL (RedisStore)

Run by common.gunicorn(app="alt_app:app", env=...): same worker class, loop
and worker count as fraiseshm, no gunicorn.conf.py and so no master hooks;
these stores need none. The product code is unchanged: the store is plugged
in through Runtime(settings, store_factory=...), which turns coalescing off.
The PERF_ variables are popped before load_settings(), which rejects unknown
FRAISESHM_* names.
"""

from __future__ import annotations

import os

from fraiseshm.config import Settings, load_settings
from fraiseshm.http.app import create_app
from fraiseshm.runtime import Runtime
from stores import LocalStore, RedisStore

STORE = os.environ.pop("FRAISESHM_PERF_STORE", "local")
REDIS_URL = os.environ.pop("FRAISESHM_PERF_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCAL_MAXSIZE = int(os.environ.pop("FRAISESHM_PERF_LOCAL_MAXSIZE", "10000"))


def _factory(_settings: Settings):  # type: ignore[no-untyped-def]
    if STORE == "redis":
        return RedisStore(REDIS_URL)
    if STORE == "local":
        return LocalStore(LOCAL_MAXSIZE)
    raise SystemExit(f"FRAISESHM_PERF_STORE={STORE!r}: expected 'local' or 'redis'")


settings = load_settings()
app = create_app(settings, Runtime(settings, store_factory=_factory))
