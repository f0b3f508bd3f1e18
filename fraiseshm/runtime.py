"""Everything one worker process holds: schema, database pool, executor, arena.

Built in the worker after fork (ASGI lifespan startup), closed on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from graphql import GraphQLObjectType

from fraiseshm.arena import Arena
from fraiseshm.arena.handled import HandledTransactions
from fraiseshm.cascade.audit import Auditor, FailureWindow
from fraiseshm.coalesce.coalescer import Coalescer
from fraiseshm.coalesce.doorbell import Doorbells
from fraiseshm.config import Settings
from fraiseshm.graphql.filters import FilterLimits
from fraiseshm.db.audit import AuditWriter
from fraiseshm.db.listener import Listener
from fraiseshm.db.pool import Database
from fraiseshm.db.replicas import LsnBoard, ReplicaSet
from fraiseshm.errors import DatabaseUnavailable
from fraiseshm.graphql.execute import Executor
from fraiseshm.graphql.check import bound_schema, load_and_check, log_result, recheck
from fraiseshm.graphql.schema import ServedSchema
from fraiseshm.graphql.limits import Limits
from fraiseshm.graphql.persisted import PersistedQueries, load_manifest
from fraiseshm.identity import check_private_types
from fraiseshm.metrics import listener_board
from fraiseshm.push.hub import Hub
from fraiseshm.push.pusher import Pusher, private_fields, private_types
from fraiseshm.service import GraphQLService

log = logging.getLogger("fraiseshm.runtime")


def limits_from(s: Settings) -> Limits:
    return Limits(
        max_document_bytes=s.max_document_bytes,
        max_tokens=s.max_document_tokens,
        max_depth=s.max_query_depth,
        max_fields=s.max_fields,
        max_root_fields=s.max_root_fields,
        max_list_fanout=s.max_list_fanout,
        max_operations=s.max_operations,
        max_fragments=s.max_fragments,
        introspection=s.introspection,
    )


class Runtime:
    def __init__(self, settings: Settings, store_factory: Callable[[Settings], Arena] | None = None) -> None:
        """store_factory: perf/ swaps in the alternatives it compares against
        (anything with the Arena methods GraphQLService calls); coalescing is off then."""
        self.settings = settings
        self._store_factory = store_factory
        self.served: ServedSchema | None = None
        self.db: Database | None = None
        self.arena: Arena | None = None
        self.handled: HandledTransactions | None = None  # mutations' transactions, for the listener
        self.coalescer: Coalescer | None = None
        self._service: GraphQLService | None = None
        self.audit: AuditWriter | None = None
        self.auditor: Auditor | None = None
        self.listener: Listener | None = None
        self.replicas: ReplicaSet | None = None
        self.board: LsnBoard | None = None
        self._recheck: asyncio.Task[None] | None = None
        self.pusher: Pusher | None = None

    @property
    def push_hub(self) -> Hub | None:
        return self.pusher.hub if self.pusher is not None else None

    @property
    def service(self) -> GraphQLService:
        if self._service is None:
            raise RuntimeError("worker runtime not started (ASGI lifespan startup did not run)")
        return self._service

    async def start(self) -> None:
        s = self.settings
        # Bound with the catalog the master checked before forking; a process that
        # did not come from that master (tests, tools) checks by itself.
        self.served = bound_schema(s.schema_sdl, s.database_dsn)
        if self.served is None:
            self.served, result = await load_and_check(s.schema_sdl, s.database_dsn, connect_timeout=s.db_connect_timeout,
                                                       transaction_pooler=s.db_transaction_pooler)
            log_result(result)
        self.db = Database(
            s.database_dsn,
            min_size=s.pool_min_size,
            max_size=s.pool_max_size,
            connect_timeout=s.db_connect_timeout,
            statement_timeout_ms=s.statement_timeout_ms,
            transaction_pooler=s.db_transaction_pooler,
        )
        self._start_replicas()
        executor = Executor(self.served, self.db, max_depth=s.max_query_depth, max_documents=s.max_document_cache,
                            limits=limits_from(s), max_document_cache_bytes=s.max_document_cache_bytes,
                            filter_limits=FilterLimits(s.filter_max_depth, s.filter_max_in, s.filter_max_conditions))
        type_map = self.served.schema.type_map
        check_private_types(s, [t for t in executor.private_types if isinstance(type_map.get(t), GraphQLObjectType)])
        if self._store_factory is not None:
            self.arena = self._store_factory(s)
        elif s.cache_enabled:
            self.arena = Arena.attach(s.arena_name)
            self.arena.register_process()
            self.handled = HandledTransactions.open(s.arena_name)
            if s.coalesce:
                self.coalescer = Coalescer(
                    self.arena,
                    Doorbells.open(s.arena_name),
                    lease=s.coalesce_lease,
                    wait=s.coalesce_wait,
                    execute_on_timeout=s.coalesce_on_timeout == "execute",
                    workers=s.effective_workers(),
                )
        if s.audit_enabled:
            self.audit = AuditWriter(
                s.database_dsn,
                retention_rows=s.audit_retention_rows,
                queue_max=s.audit_queue_max,
                flush_interval=s.audit_flush_interval,
                connect_timeout=s.db_connect_timeout,
                transaction_pooler=s.db_transaction_pooler,
            )
            self.audit.start()
            self.auditor = Auditor(self.audit.submit, FailureWindow(s.cascade_failure_window, s.cascade_failure_threshold))
        if s.listen_changes and self._store_factory is None and self.arena is not None:
            self.listener = Listener(
                s.listener_dsn or s.database_dsn,
                self.arena,
                retry_interval=s.listener_retry_interval,
                keepalive=s.listener_keepalive,
                connect_timeout=s.db_connect_timeout,
                secret=s.notify_secret,
                max_age=s.notify_max_age,
                on_heard=listener_board.recorder(s.arena_name),
                board=self.board,
                handled=self.handled,
            )
            self.listener.start()
            if self.listener.elected:
                # The host's first listener: serve only once LISTEN is up, so that no
                # worker caches a result before the listener's start-up flush.
                await self.listener.wait_listening(s.db_connect_timeout)
        persisted = PersistedQueries(
            self.arena, automatic=s.automatic_persisted_queries, only=s.persisted_queries_only, ttl=s.default_ttl,
            manifest=load_manifest(s.persisted_queries_file) if s.persisted_queries_file else None)
        if s.push_enabled:
            await self._start_push()
        self._service = GraphQLService(s, self.served, executor, self.arena, coalescer=self.coalescer,
                                       on_cascade=self._cascade_hooks(), persisted=persisted, replicas=self.replicas,
                                       handled=self.handled)
        if s.schema_recheck_interval > 0:
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_views(s.schema_recheck_interval),
                                                                    name="fraiseshm-schema-recheck")
        log.info("worker ready: schema %s, cache %s", s.schema_sdl, "on" if self.arena else "off")

    def _start_replicas(self) -> None:
        """Misses may read replicas; mutations record their commit's WAL position (issue 18)."""
        s = self.settings
        if not s.replica_dsns or self.db is None:
            return
        self.board = LsnBoard.open(s.arena_name, s.replica_lsn_slots)
        self.board.register()
        self.db.track_commit_lsn = True
        self.replicas = ReplicaSet.from_settings(s, self.db, self.board)
        self.db.replicas = self.replicas
        self.replicas.start()

    async def _start_push(self) -> None:
        """cascadeUpdates subscribers of this worker, fed by every worker of every host (fraiseshm/push/)."""
        assert self.served is not None and self.db is not None
        private = private_types(self.served)
        hub = Hub(queue_max=self.settings.push_queue_max, max_connections=self.settings.push_max_connections,
                  private_types=private, private_fields=private_fields(self.served, private),
                  gauge_prefix=push_gauge_prefix(self.settings))
        self.pusher = Pusher(self.settings, self.served, self.db, hub)
        await self.pusher.start()

    def _cascade_hooks(self) -> Callable[..., None] | None:
        """The audit, then the push: both see every committed cascade."""
        hooks = [h for h in (self.auditor, self.pusher.on_cascade if self.pusher else None) if h is not None]
        if len(hooks) <= 1:
            return hooks[0] if hooks else None

        def both(*args: object) -> None:
            for hook in hooks:
                hook(*args)

        return both

    async def _recheck_views(self, interval: float) -> None:
        """Every interval: did a served view's SQL change under us? (fraiseshm/graphql/check.py recheck)"""
        assert self.served is not None and self.db is not None
        while True:
            await asyncio.sleep(interval)  # a period, not a synchronisation
            try:
                if await recheck(self.served, self.db.fetch_column):
                    self.service.rebound()
            except DatabaseUnavailable:
                continue  # the request path reports it; check again next period
            except Exception:  # noqa: BLE001 - a watcher must survive any catalog surprise
                log.exception("re-reading the served views' definitions failed")

    async def stop(self) -> None:
        if self.pusher is not None:
            await self.pusher.stop()
            self.pusher = None
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._service is not None:
            self._service.close()
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        if self.audit is not None:
            await self.audit.stop()
            self.audit = None
        if self.replicas is not None:
            await self.replicas.stop()
            self.replicas = None
        if self.db is not None:
            await self.db.close()
        if self.board is not None:
            self.board.close()
            self.board = None
        if self.coalescer is not None:
            self.coalescer.close()
            self.coalescer.bells.close()
            self.coalescer = None
        if self.handled is not None:
            self.handled.close()
            self.handled = None
        if self.arena is not None:
            self.arena.close()
            self.arena = None


def push_gauge_prefix(settings: Settings) -> str:
    """Where each worker writes its open push connections (summed by /metrics): next to the arena."""
    return "/dev/shm/" + settings.arena_name.lstrip("/")
