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
    max_query_depth: PositiveInt = 12  # selection-set nesting limit (introspection not counted)
    max_document_cache: PositiveInt = 1024  # parsed+validated documents kept per worker (LRU)
    max_document_cache_bytes: Annotated[int, Meta(ge=MiB)] = 64 * MiB  # that LRU's estimated memory, bytes
    request_timeout: PositiveFloat = 10.0  # seconds a request may spend in PostgreSQL before a 504

    # --- cost limits (checked before validation and execution; the error names the setting) --
    max_document_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024  # query text, bytes
    max_document_tokens: Annotated[int, Meta(ge=100)] = 4000  # lexical tokens per document
    max_fields: PositiveInt = 500  # fields and aliases per document, fragments expanded
    max_root_fields: PositiveInt = 20  # root fields per operation (one SQL statement each)
    max_list_fanout: PositiveInt = 20_000  # estimated rows: page size x nesting (10 per nested list)
    max_operations: PositiveInt = 10  # operations per document
    max_fragments: PositiveInt = 50  # fragment definitions per document
    introspection: bool = True  # __schema / __type; __schema at most once per document
    max_json_depth: Annotated[int, Meta(ge=2, le=500)] = 64  # nesting of JSON in bodies, variables, tokens
    filter_max_depth: Annotated[int, Meta(ge=1, le=32)] = 5  # nesting of _and/_or/_not in a where input
    filter_max_in: PositiveInt = 100  # values in one in/nin list of a where input
    filter_max_conditions: PositiveInt = 50  # operators in one where input
    honour_no_cache: bool = False  # a client's Cache-Control: no-cache revalidates (coalesced); false: ignored
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (fraiseshm/logs.py)
    request_id_header: str = "X-Request-ID"  # request id taken from this header when sane, else made; echoed
    expose_worker_header: bool = False  # add X-Fraiseshm-Worker: <pid> (diagnosis, tests)
    fast_hit: bool = True  # answer memoised hits before falcon routing (fraiseshm/http/fast_hit.py); false: all via falcon
    fast_hit_protocol: bool = True  # with fast_hit: answer them inside gunicorn's HTTP/1.1 protocol (fraiseshm/http/worker.py)

    # --- HTTP surface: persisted queries, batching, GraphiQL (docs/ARCHITECTURE.md, "The HTTP surface") --
    automatic_persisted_queries: bool = True  # Apollo's APQ: a sha256 hash in place of the query text
    persisted_queries_file: str = ""  # registered operations: Apollo's manifest or {"<sha256>": "<query>"}
    persisted_queries_only: bool = False  # allow-list: run only persisted_queries_file's operations
    max_batch_size: Annotated[int, Meta(ge=0, le=1000)] = 10  # requests in one JSON array body; 0 = no batches
    graphiql: bool = True  # GET /graphql with Accept: text/html serves GraphiQL (assets in the package)

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
    schema_sql: tuple[str, ...] = ("examples/blog/schema.sql", "examples/blog/private.sql")  # loaded into embedded db, in order

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

    # --- identity / isolation / admin (docs/ARCHITECTURE.md, "Identity") ---------
    jwt_secret: str = ""  # HS256/384/512 secret (>= 32 bytes); set it as FRAISESHM_JWT_SECRET
    jwt_public_keys: str = ""  # path of a PEM public key or a JWKS file (RS*/ES*/PS*/EdDSA)
    jwt_algorithms: tuple[str, ...] = ()  # accepted algorithms; () = HS256 with a secret, else RS256 + ES256
    jwt_issuer: str = ""  # required `iss` when set
    jwt_audience: str = ""  # required `aud` when set
    jwt_leeway: Annotated[float, Meta(ge=0, le=300)] = 0.0  # seconds of clock skew allowed on exp/nbf
    jwt_require_exp: bool = True  # refuse tokens without `exp`
    jwt_cache_size: Annotated[int, Meta(ge=0)] = 10_000  # verified tokens remembered per worker (LRU)
    scope_claims: tuple[str, ...] = ("sub",)  # verified claims that reach PostgreSQL and scope private entries
    jwt_role_claim: str = ""  # claim naming the PostgreSQL role (SET LOCAL ROLE); must be in db_roles
    db_roles: tuple[str, ...] = ()  # roles a token may ask for
    db_role: str = ""  # role every request runs as unless its token names another; "" = the pool's user
    scope_header: str = ""  # request header that scopes private entries, set by a trusted gateway
    scope_header_trusted: bool = False  # required with scope_header: the gateway sets it and strips clients' own
    admin_token: str = ""  # token for /admin/*; empty = admin endpoints disabled

    # --- cascade audit -------------------------------------------------------
    cascade_failure_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.0005  # alert ratio
    audit_retention_rows: PositiveInt = 100_000  # audit records kept in PostgreSQL
    audit_enabled: bool = True  # verify each cascade against the triggers' record and write the audit trail
    audit_flush_interval: Annotated[float, Meta(gt=0, le=60)] = 0.05  # seconds audit records wait to be batched
    audit_queue_max: Annotated[int, Meta(ge=100, le=10_000_000)] = 100_000  # audit records buffered per worker
    health_min_queries: PositiveInt = 200  # /health judges the hit rate only on at least this many queries in its window
    cascade_failure_window: Annotated[float, Meta(ge=1, le=86_400)] = 300.0  # seconds the failure rate spans
    # graphql-cascade size limits of a response's cascade (the spec's defaults); what is cut is
    # covered by typeInvalidations, whole types at a time (fraiseshm/cascade/spec.py)
    cascade_max_updated: PositiveInt = 500  # updated entities listed
    cascade_max_deleted: PositiveInt = 100  # deleted entities listed
    cascade_max_bytes: Annotated[int, Meta(ge=1024)] = 5 * MiB  # serialized cascade, bytes
    cascade_max_invalidations: PositiveInt = 200  # query invalidation hints (then broader ones)

    # --- writes from anywhere --------------------------------------------------
    listen_changes: bool = True  # one worker per host LISTENs fraiseshm_changes and invalidates
    listener_retry_interval: Annotated[float, Meta(gt=0, le=60)] = 0.5  # seconds between reconnects
    listener_keepalive: Annotated[float, Meta(gt=0, le=300)] = 5.0  # seconds between liveness queries
    notify_secret: str = ""  # 64 hex digits: the kit's notification key; "" = read it from fraiseshm.notify_key
    notify_max_age: Annotated[float, Meta(ge=1, le=86_400)] = 600.0  # seconds a signed change notification stays acceptable
    schema_recheck_interval: Annotated[float, Meta(ge=0, le=3600)] = 10.0  # seconds between view-definition checks; 0 = off

    # --- read replicas and poolers (docs/ARCHITECTURE.md, "Read replicas") ----------
    replica_dsns: tuple[str, ...] = ()  # streaming replicas that serve misses; one server per DSN (a pooler per replica is fine)
    replica_max_lag: Annotated[float, Meta(gt=0, le=3600)] = 5.0  # seconds of replay lag past which a replica leaves rotation
    replica_check_interval: Annotated[float, Meta(gt=0, le=60)] = 1.0  # seconds between a worker's checks of each replica
    replica_wait: Annotated[float, Meta(ge=0, le=10)] = 0.0  # seconds a miss waits for replay before reading the primary; 0 = at once
    replica_lsn_slots: Annotated[int, Meta(ge=1024, le=1 << 22)] = 1 << 16  # per-tag WAL positions shared by the workers
    listener_dsn: str = ""  # LISTEN connection: direct or session-mode pooler; "" = database_dsn
    db_transaction_pooler: bool = False  # database_dsn/replica_dsns are a transaction-mode pooler (PgBouncer): no named prepared statements, every statement in a transaction
    # --- push (cascadeUpdates over WebSocket, fraiseshm/push/) -----------------
    push_enabled: bool = True  # every worker LISTENs fraiseshm_cascades and serves /graphql/ws
    push_queue_max: Annotated[int, Meta(ge=1, le=100_000)] = 256  # cascades queued per subscriber; past it the subscriber is closed
    push_max_connections: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000  # subscriptions per worker
    push_init_timeout: Annotated[float, Meta(gt=0, le=300)] = 10.0  # seconds a socket may take to send connection_init
    push_entity_reads: Annotated[int, Meta(ge=0, le=10_000)] = 100  # rows of one plain-SQL change re-read for subscribers; more -> typeInvalidations

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
        if self.request_timeout >= self.worker_timeout:
            raise ConfigError(
                f"request_timeout ({self.request_timeout}s) must be shorter than worker_timeout ({self.worker_timeout}s)"
            )
        if self.statement_timeout_ms > self.request_timeout * 1000:
            # a mutation is never cancelled from the client (it may have committed): its
            # statement_timeout is what holds it to the request's deadline
            raise ConfigError(
                f"statement_timeout_ms ({self.statement_timeout_ms}) must be at most request_timeout "
                f"({self.request_timeout}s) in milliseconds"
            )
        if self.persisted_queries_only and not self.persisted_queries_file:
            raise ConfigError("persisted_queries_only needs persisted_queries_file: the operations it may run")
        self._check_identity()

    def _check_identity(self) -> None:
        if self.scope_header and not self.scope_header_trusted:
            raise ConfigError(
                f"scope_header ({self.scope_header!r}) is honoured only when a trusted gateway sets it and strips "
                "the clients' own: set scope_header_trusted = true (FRAISESHM_SCOPE_HEADER_TRUSTED)"
            )
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise ConfigError("jwt_secret must be at least 32 bytes (RFC 7518 3.2: a key as long as the HS256 hash)")
        for alg in self.jwt_algorithms:
            if alg.lower() == "none" or alg not in _JWT_ALGORITHMS:
                raise ConfigError(f"jwt_algorithms: {alg!r} is not one of {sorted(_JWT_ALGORITHMS)}")
            if alg.startswith("HS") and not self.jwt_secret:
                raise ConfigError(f"jwt_algorithms has {alg}: set jwt_secret (FRAISESHM_JWT_SECRET)")
            if not alg.startswith("HS") and not self.jwt_public_keys:
                raise ConfigError(f"jwt_algorithms has {alg}: set jwt_public_keys (a PEM or JWKS file)")
        if self.jwt_secret and self.jwt_public_keys and not self.jwt_algorithms:
            raise ConfigError("both jwt_secret and jwt_public_keys are set: list the accepted jwt_algorithms")
        for role in (self.db_role, *self.db_roles):
            if role and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", role):
                raise ConfigError(f"db_role/db_roles: {role!r} is not a plain role name")
        if self.jwt_role_claim and not self.db_roles:
            raise ConfigError("jwt_role_claim needs db_roles: the roles a token may ask for")
        if self.scope_header and not re.fullmatch(r"[A-Za-z0-9-]+", self.scope_header):
            raise ConfigError(f"scope_header: {self.scope_header!r} is not a header name")
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.request_id_header):
            raise ConfigError(f"request_id_header: {self.request_id_header!r} is not a header name")

    def identity_configured(self) -> bool:
        """A verified identity exists: a signed token, or a header a trusted gateway sets."""
        return bool(self.jwt_secret or self.jwt_public_keys or (self.scope_header and self.scope_header_trusted))

    def accepted_jwt_algorithms(self) -> tuple[str, ...]:
        if self.jwt_algorithms:
            return self.jwt_algorithms
        if self.jwt_secret:
            return ("HS256",)
        return ("RS256", "ES256") if self.jwt_public_keys else ()


_JWT_ALGORITHMS = frozenset(
    ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
)

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
