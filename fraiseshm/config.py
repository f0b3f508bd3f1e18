"""The one Settings object, and the only reader of os.environ.

Settings come from defaults, then a TOML file (``FRAISESHM_CONFIG`` or the
``path`` argument), then ``FRAISESHM_<FIELD>`` environment variables. A bad
value raises ConfigError naming the field, the value and where it came from.
gunicorn.conf.py, the app and the CLI all read this same object.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fraiseshm.errors import ConfigError

ENV_PREFIX = "FRAISESHM_"
MiB = 1 << 20

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # --- HTTP / gunicorn -----------------------------------------------------
    bind: str = "127.0.0.1:8000"  # host:port gunicorn listens on
    workers: Annotated[int, Meta(ge=0)] = 0  # worker processes; 0 = one per core
    worker_timeout: PositiveInt = 30  # seconds before gunicorn kills a silent worker
    max_body_bytes: PositiveInt = 1 * MiB  # request bodies above this get 413
    max_query_depth: PositiveInt = 12  # selection-set nesting limit
    max_document_cache: PositiveInt = 1024  # parsed+validated documents kept per worker (LRU)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    expose_worker_header: bool = False  # add X-Fraiseshm-Worker: <pid> (diagnosis, tests)

    # --- PostgreSQL ----------------------------------------------------------
    database_dsn: str = "embedded"  # postgres://... or "embedded" (private cluster)
    embedded_dir: str = ""  # data directory of the embedded cluster; "" = per-checkout temp dir
    embedded_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0 = a free port
    seed_users: Annotated[int, Meta(ge=0)] = 2000  # embedded: users seeded into an empty db
    pool_min_size: Annotated[int, Meta(ge=0)] = 1  # asyncpg connections per worker, at least
    pool_max_size: PositiveInt = 8  # asyncpg connections per worker, at most
    db_connect_timeout: PositiveFloat = 5.0  # seconds to wait for a connection
    statement_timeout_ms: PositiveInt = 10_000  # PostgreSQL statement_timeout per query

    # --- schema --------------------------------------------------------------
    schema_sdl: str = "examples/blog/schema.graphql"  # SDL with @view/@function/@cache
    schema_sql: tuple[str, ...] = ("examples/blog/schema.sql",)  # loaded into embedded db

    # --- cache arena ---------------------------------------------------------
    cache_enabled: bool = True  # false: every query goes to PostgreSQL
    stats_enabled: bool = True  # false: no per-request counters (perf/bench_stats.py's "off" build)
    arena_name: str = "/fraiseshm"  # POSIX shm name (also prefixes the semaphores)
    arena_size: Annotated[int, Meta(ge=4 * MiB)] = 256 * MiB  # bytes, fixed at start
    max_entry_bytes: Annotated[int, Meta(ge=1024)] = 1 * MiB  # larger responses go uncached
    arena_shards: Annotated[int, Meta(ge=1, le=256)] = 16  # index lock stripes
    tag_slots: Annotated[int, Meta(ge=1024)] = 1 << 16  # invalidation table size
    default_ttl: PositiveFloat = 86_400.0  # seconds an entry lives without @cache(ttl)

    # --- coalescing ----------------------------------------------------------
    coalesce: bool = True  # one database execution per key per host
    coalesce_lease: PositiveFloat = 10.0  # seconds a leader owns a flight
    coalesce_wait: PositiveFloat = 15.0  # seconds a follower waits before giving up
    coalesce_on_timeout: Literal["error", "execute"] = "error"  # what a timed-out follower does
    stale_while_revalidate: bool = False  # serve a TTL-expired (never an invalidated) entry while one leader refreshes

    # --- isolation / admin ---------------------------------------------------
    scope_header: str = ""  # request header whose value scopes the cache (tenant/user)
    scope_jwt_claim: str = ""  # claim of the bearer JWT that scopes the cache
    admin_token: str = ""  # token for /admin/*; empty = admin endpoints disabled

    # --- cascade audit -------------------------------------------------------
    cascade_failure_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.0005  # alert ratio
    audit_retention_rows: PositiveInt = 100_000  # audit records kept in PostgreSQL
    audit_enabled: bool = True  # verify each cascade against the triggers' record and write the audit trail
    audit_flush_interval: Annotated[float, Meta(gt=0, le=60)] = 0.05  # seconds audit records wait to be batched
    audit_queue_max: Annotated[int, Meta(ge=100, le=10_000_000)] = 100_000  # audit records buffered per worker
    cascade_failure_window: Annotated[float, Meta(ge=1, le=86_400)] = 300.0  # seconds the failure rate spans

    # --- writes from anywhere --------------------------------------------------
    listen_changes: bool = True  # one worker per host LISTENs fraiseshm_changes and invalidates
    listener_retry_interval: Annotated[float, Meta(gt=0, le=60)] = 0.5  # seconds between reconnects
    listener_keepalive: Annotated[float, Meta(gt=0, le=300)] = 5.0  # seconds between liveness queries
    notify_secret: str = ""  # 64 hex digits: the kit's notification key; "" = read it from fraiseshm.notify_key
    notify_max_age: Annotated[float, Meta(ge=1, le=86_400)] = 600.0  # seconds a signed change notification stays acceptable
    schema_recheck_interval: Annotated[float, Meta(ge=0, le=3600)] = 10.0  # seconds between view-definition checks; 0 = off

    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\[?[\w.:-]*\]?:\d{1,5}", self.bind):
            raise ConfigError(f"bind: expected host:port, got {self.bind!r}")
        if self.pool_max_size < self.pool_min_size:
            raise ConfigError(
                f"pool_max_size ({self.pool_max_size}) is below pool_min_size ({self.pool_min_size})"
            )
        if self.max_entry_bytes * 8 > self.arena_size:
            # the arena keeps room for at least 4 largest entries per shard, plus its tables
            raise ConfigError(
                f"max_entry_bytes ({self.max_entry_bytes}) must be at most an eighth of "
                f"arena_size ({self.arena_size}); raise FRAISESHM_ARENA_SIZE or lower FRAISESHM_MAX_ENTRY_BYTES"
            )
        if self.coalesce_lease >= self.worker_timeout:
            raise ConfigError(
                f"coalesce_lease ({self.coalesce_lease}s) must be shorter than worker_timeout "
                f"({self.worker_timeout}s), or gunicorn kills a leader that still owns its flight"
            )
        if self.notify_secret and not re.fullmatch(r"[0-9a-f]{64}", self.notify_secret):
            raise ConfigError("notify_secret: expected the 64 hex digits of fraiseshm.notify_key "
                              "(`fraiseshm db status --show-key`), or empty to read it from the database")
        if not self.arena_name.startswith("/") or "/" in self.arena_name[1:]:
            raise ConfigError(f"arena_name: expected '/name', got {self.arena_name!r}")


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def _env_value(field: str, raw: str) -> object:
    """Environment strings -> the shapes msgspec.convert(strict=False) accepts."""
    annotation = _FIELDS[field].type
    if annotation == tuple[str, ...]:
        return [p for p in raw.split(",") if p]
    return raw


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < TOML file < FRAISESHM_* environment variables."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    toml_path = path or env.get(ENV_PREFIX + "CONFIG")
    if toml_path:
        try:
            data = tomllib.loads(Path(toml_path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {toml_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {toml_path}: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"{toml_path}: unknown setting {key!r}")
            values[key], sources[key] = value, str(toml_path)

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _FIELDS:
            raise ConfigError(f"environment variable {name}: unknown setting {key!r}")
        values[key], sources[key] = _env_value(key, raw), f"environment variable {name}"

    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.(\w+)", str(exc))
        if match is None:  # a cross-field check from __post_init__
            origin = ", ".join(sorted(set(sources.values()))) or "defaults"
            raise ConfigError(f"{exc} (settings from {origin})") from None
        field = match.group(1)
        raise ConfigError(
            f"invalid setting {field!r} = {values.get(field)!r} from "
            f"{sources.get(field, 'defaults')}: {exc}"
        ) from None
