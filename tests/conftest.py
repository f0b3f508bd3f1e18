"""Session-wide PostgreSQL for every test: a real embedded cluster, no mocks.

pg_cluster  one EmbeddedCluster (initdb in a temp dir, fsync off) with the
            example blog schema loaded and SEED_USERS users seeded; stopped and
            removed at the end of the session.
pg_dsn      its DSN (postgresql://fraiseshm@127.0.0.1:PORT/fraiseshm).
reset_db    for a test that needs pristine data: empties the blog tables and
            seeds them again (~0.1 s), before the test runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraiseshm.db.embedded import EmbeddedCluster

ROOT = Path(__file__).resolve().parents[1]
BLOG_SQL = ROOT / "examples" / "blog" / "schema.sql"
SEED_USERS = 200  # x 5 posts x 2 comments: 200 users, 1,000 posts, 2,000 comments


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedCluster]:
    # Not tmp_path_factory: as root its base (/tmp/pytest-of-root) is mode 0700,
    # which the unprivileged user running PostgreSQL cannot traverse.
    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-test-pg-"))
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([BLOG_SQL], seed_users=SEED_USERS)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: EmbeddedCluster) -> str:
    return pg_cluster.dsn


def reseed(cluster: EmbeddedCluster, users: int = SEED_USERS) -> None:
    """Empty the blog tables and seed them again, in one transaction.

    The kit's TRUNCATE triggers send the tables' t: and w: tags (signed), and
    fn_seed's fraiseshm.touch does after its bulk insert: a server under test
    that listens drops what it cached from the old rows.
    """
    cluster.psql(
        "BEGIN;"
        " TRUNCATE tb_comment, tb_post, tb_user RESTART IDENTITY;"
        f" SELECT fn_seed({int(users)});"
        " COMMIT;"
    )


@pytest.fixture
def reset_db(pg_cluster: EmbeddedCluster) -> EmbeddedCluster:
    reseed(pg_cluster)
    return pg_cluster


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[EmbeddedCluster]:
    """A private cluster for one test module that stops or restarts PostgreSQL."""
    directory = Path(tempfile.mkdtemp(prefix="fraiseshm-own-pg-"))
    cluster = EmbeddedCluster(directory, fast=True)
    try:
        cluster.ensure([BLOG_SQL], seed_users=30)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
