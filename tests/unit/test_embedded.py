"""EmbeddedCluster: configuration errors, and its life cycle on a real (tiny) cluster.

The life-cycle tests initdb a cluster of their own (a few seconds) because they
stop, crash and restart it, which the session's pg_cluster must not suffer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fraiseshm.config import Settings
from fraiseshm.db.embedded import EmbeddedCluster, default_directory, find_bindir, resolve_dsn
from fraiseshm.errors import ConfigError, DatabaseUnavailable, FraiseshmError


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Not tmp_path: as root, pytest's base dir is 0700 and PostgreSQL runs as another user.
    path = Path(tempfile.mkdtemp(prefix="fraiseshm-test-emb-"))
    path.chmod(0o755)  # mkdtemp makes it 0700; PostgreSQL's user must traverse it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_find_bindir_has_the_server_binaries() -> None:
    bindir = find_bindir()
    for name in ("initdb", "pg_ctl", "postgres", "psql"):
        assert (bindir / name).exists(), name


def test_default_directory_is_per_checkout_and_user() -> None:
    path = default_directory()
    assert path.parent == Path(tempfile.gettempdir())
    assert path.name.startswith(f"fraiseshm-pg-{os.getuid()}-") and len(path.name.rsplit("-", 1)[1]) == 10
    assert EmbeddedCluster().directory == path
    assert EmbeddedCluster("").directory == path


def test_untraversable_parent_is_a_config_error(scratch: Path) -> None:
    closed = scratch / "closed"
    closed.mkdir(mode=0o600)  # nobody may traverse it, not even its owner
    cluster = EmbeddedCluster(closed / "pg")
    with pytest.raises(ConfigError, match=r"closed \(mode 0600\) is not traversable by user"):
        cluster.ensure()


def test_socket_path_too_long_is_a_config_error(scratch: Path) -> None:
    with pytest.raises(ConfigError, match="too long for a unix socket path"):
        EmbeddedCluster(scratch / ("x" * 120)).ensure()


def test_missing_sql_file_is_a_config_error(scratch: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        EmbeddedCluster(scratch / "pg").ensure([scratch / "nope.sql"])


def test_resolve_dsn_passes_real_dsns_through() -> None:
    dsn = "postgresql://app@db.example:5432/app"
    assert resolve_dsn(Settings(database_dsn=dsn)) == dsn
    with pytest.raises(ConfigError, match="database_dsn"):
        resolve_dsn(Settings(database_dsn="mysql://nope"))


# --- life cycle --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    path = Path(tempfile.mkdtemp(prefix="fraiseshm-test-life-"))
    path.chmod(0o755)
    sql = path / "schema.sql"
    sql.write_text("CREATE TABLE IF NOT EXISTS t (x int);\n")
    os.chmod(sql, 0o644)
    c = EmbeddedCluster(path / "pg", fast=True)
    c.sql = sql  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(path, ignore_errors=True)


def _postmaster(c: EmbeddedCluster) -> psutil.Process:
    return psutil.Process(int((c.data_dir / "postmaster.pid").read_text().split()[0]))


def test_ensure_creates_then_reuses(cluster: EmbeddedCluster) -> None:
    dsn = cluster.ensure([cluster.sql])  # type: ignore[attr-defined]
    assert dsn == f"postgresql://fraiseshm@127.0.0.1:{cluster.port}/fraiseshm"
    assert cluster.is_running()
    pid, port = _postmaster(cluster).pid, cluster.port
    owner = (cluster.data_dir / "PG_VERSION").stat().st_uid
    if os.geteuid() == 0:
        assert owner != 0  # PostgreSQL runs unprivileged
    assert cluster.psql("SHOW listen_addresses").strip() == "127.0.0.1"
    assert cluster.psql("SHOW shared_preload_libraries").strip() == "pg_stat_statements"
    assert cluster.psql("SHOW fsync").strip() == "off"
    assert cluster.psql("SHOW max_connections").strip() == "200"

    cluster.psql("INSERT INTO t VALUES (1)")
    assert cluster.ensure([cluster.sql]) == dsn  # type: ignore[attr-defined]
    assert _postmaster(cluster).pid == pid and cluster.port == port  # reused, not restarted
    assert cluster.psql("SELECT count(*) FROM t").strip() == "1"  # SQL not loaded twice


def test_stop_then_ensure_restarts_with_data(cluster: EmbeddedCluster) -> None:
    cluster.ensure([cluster.sql])  # type: ignore[attr-defined]
    port = cluster.port
    cluster.psql("INSERT INTO t VALUES (2)")
    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(DatabaseUnavailable):
        cluster.psql("SELECT 1")
    cluster.ensure([cluster.sql])  # type: ignore[attr-defined]
    assert cluster.port == port
    assert "2" in cluster.psql("SELECT x FROM t").split()


def test_sql_errors_raise(cluster: EmbeddedCluster) -> None:
    cluster.ensure()
    with pytest.raises(FraiseshmError, match="syntax error"):
        cluster.psql("SELEC 1")


def test_stale_pid_file_of_a_reused_pid(cluster: EmbeddedCluster) -> None:
    """After a crash, postmaster.pid may name a live process that is not
    PostgreSQL (pids are reused): the postmaster would refuse to start."""
    cluster.ensure()
    cluster.stop()
    (cluster.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{cluster.data_dir}\n")
    assert not cluster.is_running()
    cluster.ensure()
    assert cluster.is_running() and _postmaster(cluster).pid != os.getpid()


def test_recovers_after_the_postmaster_is_killed(cluster: EmbeddedCluster) -> None:
    cluster.ensure()
    cluster.psql("INSERT INTO t VALUES (3)")
    postmaster = _postmaster(cluster)
    children = postmaster.children(recursive=True)
    postmaster.send_signal(signal.SIGKILL)
    # backends exit by themselves when their postmaster dies
    psutil.wait_procs([postmaster, *children], timeout=30)
    assert not cluster.is_running()
    cluster.ensure()
    assert "3" in cluster.psql("SELECT x FROM t").split()


def test_remembered_port_taken_picks_another(cluster: EmbeddedCluster) -> None:
    cluster.ensure()
    old = cluster.port
    cluster.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old port may be in TIME_WAIT
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        cluster.ensure()
    assert cluster.port != old and cluster.is_running()
    assert cluster.psql("SELECT 1").strip() == "1"
