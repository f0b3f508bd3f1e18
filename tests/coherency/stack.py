"""One coherency run: a real gunicorn (several workers) on a real PostgreSQL, then the check.

Variants (``VARIANTS``):
    listener  change listener on; writers use mutations AND plain SQL
    mutations listener off (FRAISESHM_LISTEN_CHANGES=false); mutations only,
              so only the mutation path's own invalidation keeps the cache fresh
    no-listener-sql  listener off WITH plain-SQL writers: a broken set-up on
              purpose, the harness must report stale reads (it bites)
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fraiseshm.db.embedded import EmbeddedCluster
from tests.coherency.harness import History, Report, Workload, run
from tests.integration.server import ROOT, Server


@dataclass(frozen=True)
class Variant:
    name: str
    listen: bool
    mutations: bool
    sql: bool


VARIANTS = {
    "listener": Variant("listener", listen=True, mutations=True, sql=True),
    "mutations": Variant("mutations", listen=False, mutations=True, sql=False),
    "no-listener-sql": Variant("no-listener-sql", listen=False, mutations=True, sql=True),
}


@dataclass(frozen=True)
class Example:
    name: str
    sql: tuple[Path, ...]
    sdl: Path
    seed: str  # SQL that seeds a small, hot data set (the writers and readers share it)

    def workload(self) -> Workload:
        if self.name == "blog":
            from tests.coherency.blog import Blog

            return Blog()
        from tests.coherency.shop import Shop  # noqa: PLC0415 - only when the shop exists

        return Shop()


EXAMPLES = {
    # 16 users, 80 posts, 160 comments
    "blog": Example("blog", (ROOT / "examples/blog/schema.sql", ROOT / "examples/blog/private.sql"), ROOT / "examples/blog/schema.graphql",
                    "SELECT fn_seed(16)"),
    # 16 customers with 3 orders each, 24 products in 8 categories
    "shop": Example("shop", (ROOT / "examples/shop/schema.sql",), ROOT / "examples/shop/schema.graphql",
                    "SELECT fn_seed(16, 24, 3)"),
}


@contextmanager
def cluster_for(example: Example) -> Iterator[EmbeddedCluster]:
    """A private cluster with the example's schema and seed: the run rewrites its data."""
    directory = Path(tempfile.mkdtemp(prefix=f"fraiseshm-coherency-{example.name}-"))
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure(list(example.sql))
        cluster.psql(example.seed)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def run_variant(
    example: Example,
    dsn: str,
    variant: Variant,
    *,
    reads: int,
    workers: int = 2,
    readers: int = 6,
    writers: int = 4,
    reads_per_write: int = 20,
    grace: float = 0.1,
    seed: int = 12,
    env: dict[str, str] | None = None,
    after: Callable[[Server], None] | None = None,
) -> Report:
    """env: more server settings (replicas, a pooler); after(server): called once the run
    is over, while the server still runs (to read its figures)."""
    env = {"FRAISESHM_SCHEMA_SDL": str(example.sdl), "FRAISESHM_LISTEN_CHANGES": "true" if variant.listen else "false",
           **(env or {})}
    workload = example.workload()
    history = History(grace)
    with Server(dsn, workers=workers, env=env, tag=f"coh-{example.name}") as server:

        async def main() -> Report:
            await workload.load(history, dsn)
            return await run(workload, history, server.url, dsn, reads=reads, readers=readers, writers=writers,
                             reads_per_write=reads_per_write, mutations=variant.mutations, sql=variant.sql,
                             variant=variant.name, seed=seed)

        report = asyncio.run(main())
        if after is not None:
            after(server)
        return report
