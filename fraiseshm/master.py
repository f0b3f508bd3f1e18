"""What the gunicorn master owns: the embedded database (if any) and the arena.

Called from gunicorn.conf.py's hooks; kept here so the hooks stay one line
each and the logic is importable by tests and the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from fraiseshm.arena import Arena
from fraiseshm.arena.handled import HandledTransactions
from fraiseshm.coalesce.doorbell import Doorbells
from fraiseshm.config import ENV_PREFIX, Settings
from fraiseshm.db.embedded import EmbeddedCluster
from fraiseshm.db.replicas import LsnBoard
from fraiseshm.errors import ConfigError, SchemaError, StartupFailed
from fraiseshm.graphql.check import load_and_check, log_result
from fraiseshm.graphql.persisted import load_manifest
from fraiseshm.metrics import listener_board

log = logging.getLogger("fraiseshm.master")


@dataclass
class Master:
    settings: Settings
    arena: Arena | None
    bells: Doorbells | None = None
    cluster: EmbeddedCluster | None = None  # the embedded PostgreSQL this master started

    def reap(self, pid: int) -> None:
        """A worker exited (cleanly or SIGKILLed): keep its counters, free its slots."""
        if self.arena is not None and self.arena.reap(pid):
            log.info("reaped worker %d: stats folded into totals, flights released", pid)
            if self.bells is not None:  # followers of its flights re-read at once
                self.bells.ring_all(self.settings.effective_workers())

    def stop(self) -> None:
        if self.arena is not None:
            name = self.arena.name
            self.arena.close()
            Arena.unlink(name)
            HandledTransactions.unlink(name)
            listener_board.unlink(name)
            self.arena = None
            log.info("arena %s unlinked", name)
        if self.bells is not None:
            self.bells.close()
            Doorbells.unlink(self.settings.arena_name)
            self.bells = None
        if self.settings.replica_dsns:
            LsnBoard.unlink(self.settings.arena_name)
        if self.cluster is not None:
            self.cluster.stop()
            log.info("embedded PostgreSQL stopped (data kept in %s)", self.cluster.directory)
            self.cluster = None


def _check_schema(settings: Settings) -> None:
    """The SDL against the database, once, before the arena and the workers exist.

    Workers inherit the checked catalog (fork). A failure is one message; gunicorn
    prints a RuntimeError's message and exits 1 without a traceback.
    """
    try:
        _served, result = asyncio.run(
            load_and_check(settings.schema_sdl, settings.database_dsn, connect_timeout=settings.db_connect_timeout,
                           request_role=settings.db_role, transaction_pooler=settings.db_transaction_pooler))
    except SchemaError as exc:
        raise StartupFailed(str(exc)) from None  # gunicorn prints it once: "Error: ..."
    log_result(result)


def _check_persisted(settings: Settings) -> None:
    """A manifest of registered operations that does not load stops the start (workers load it too)."""
    if settings.persisted_queries_file:
        try:
            manifest = load_manifest(settings.persisted_queries_file)
        except ConfigError as exc:
            raise StartupFailed(str(exc)) from None
        log.info("%d registered operations in %s%s", len(manifest), settings.persisted_queries_file,
                 " (allow-list: only these run)" if settings.persisted_queries_only else "")


def start_master(settings: Settings, _log: object = None) -> Master:
    started = None
    if settings.database_dsn == "embedded":
        cluster = EmbeddedCluster(settings.embedded_dir or None, settings.embedded_port)
        started = None if cluster.is_running() else cluster  # stop on exit only what we started
        dsn = cluster.ensure([Path(p) for p in settings.schema_sql], seed_users=settings.seed_users)
        # Workers are forked after this and load their Settings from the environment.
        os.environ[ENV_PREFIX + "DATABASE_DSN"] = dsn
        settings = msgspec.structs.replace(settings, database_dsn=dsn)
        log.info("embedded PostgreSQL ready at %s", dsn)
    try:
        _check_schema(settings)
        _check_persisted(settings)
    except BaseException:
        if started is not None:
            started.stop()
        raise
    arena, bells = None, None
    if settings.cache_enabled:
        arena = Arena.create(
            settings.arena_name,
            size=settings.arena_size,
            max_entry=settings.max_entry_bytes,
            shards=settings.arena_shards,
            tag_slots=settings.tag_slots,
        )
        log.info("arena %s created: %d MiB", settings.arena_name, settings.arena_size >> 20)
        HandledTransactions.create(settings.arena_name)
        if settings.coalesce:
            bells = Doorbells.create(settings.arena_name)
    if settings.replica_dsns:
        LsnBoard.create(settings.arena_name, settings.replica_lsn_slots).close()  # zeroed: positions of this run only
        log.info("read replicas: %s", ", ".join(settings.replica_dsns))
    return Master(settings=settings, arena=arena, bells=bells, cluster=started)
