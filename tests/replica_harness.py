"""A real streaming replica of an EmbeddedCluster, and a real PgBouncer, started by the tests.

StreamingReplica  pg_basebackup -R from the primary into its own directory, with
                  recovery_min_apply_delay (a replica that applies every commit late
                  on purpose), started and stopped with pg_ctl like the primary.
PgBouncer         Debian's pgbouncer in front of one cluster, pool_mode transaction
                  (or session), trust auth, on a free port; stopped at the end.

Both run as the same unprivileged user as the embedded cluster. A missing binary
fails with the Debian package to install (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fraiseshm.db.embedded import DB_NAME, DB_USER, EmbeddedCluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a port that is opening; bounded by the deadline
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class StreamingReplica:
    """A hot standby of primary, applying WAL apply_delay_ms late."""

    def __init__(self, primary: EmbeddedCluster, apply_delay_ms: int = 500) -> None:
        self.primary = primary
        self.apply_delay_ms = apply_delay_ms
        self.directory = Path(tempfile.mkdtemp(prefix="fraiseshm-replica-"))
        self.cluster = EmbeddedCluster(self.directory, fast=True)
        self.slot = f"fraiseshm_test_{os.getpid()}_{self.directory.name[-8:].lower().replace('-', '_')}"

    @property
    def dsn(self) -> str:
        return self.cluster.dsn

    def create(self) -> StreamingReplica:
        cluster = self.cluster
        cluster._prepare_directory()
        # A physical slot keeps the WAL the replica has not received while it is stopped.
        self.primary.psql(f"SELECT pg_create_physical_replication_slot('{self.slot}')")
        result = cluster._run(
            [cluster.bindir / "pg_basebackup", "-D", cluster.data_dir, "-R", "-X", "stream", "--checkpoint=fast",
             "-S", self.slot, "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", DB_USER, "--no-sync"],
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed (exit {result.returncode}): {result.stderr.strip()}")
        for stale in cluster.data_dir.glob(".s.PGSQL.*"):  # the primary's socket lock, copied along
            stale.unlink()
        with open(cluster.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"recovery_min_apply_delay = '{self.apply_delay_ms}ms'\n"
                       "hot_standby = on\n"
                       "hot_standby_feedback = on\n"  # no query cancelled by vacuum replay
                       "wal_receiver_status_interval = '1s'\n")
        cluster.start()
        return self

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def promote(self) -> None:
        self.cluster._run([self.cluster.bindir / "pg_ctl", "promote", "-w", "-D", self.cluster.data_dir])

    def replay_lsn(self) -> str:
        return self.cluster.psql("SELECT pg_last_wal_replay_lsn()").strip()

    def destroy(self) -> None:
        try:
            self.cluster.stop()
        finally:
            try:
                self.primary.psql(f"SELECT pg_drop_replication_slot('{self.slot}')")
            except Exception:  # noqa: BLE001 - the primary may already be gone
                pass
            shutil.rmtree(self.directory, ignore_errors=True)


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """pgbouncer in front of one cluster's database; pool_mode transaction by default."""

    def __init__(self, cluster: EmbeddedCluster, *, pool_mode: str = "transaction", pool_size: int = 4) -> None:
        if not Path(PGBOUNCER).exists():
            raise RuntimeError("pgbouncer is not installed: `apt-get install pgbouncer` "
                               "(scripts/bootstrap.sh test installs it)")
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="fraiseshm-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def start(self) -> PgBouncer:
        d = self.directory
        (d / "userlist.txt").write_text(f'"{DB_USER}" ""\n')
        ini = (
            "[databases]\n"
            f"{DB_NAME} = host=127.0.0.1 port={self.cluster.port} dbname={DB_NAME}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {d}\n"
            "auth_type = trust\n"
            f"auth_file = {d / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            "server_reset_query = DISCARD ALL\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {d / 'pgbouncer.log'}\n"
            f"pidfile = {d / 'pgbouncer.pid'}\n"
        )
        (d / "pgbouncer.ini").write_text(ini)
        runas = self.cluster._user()
        if runas.user is not None:
            for path in [d, *d.iterdir()]:
                os.chown(path, runas.uid, runas.gid)
        self.proc = subprocess.Popen([PGBOUNCER, str(d / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, **runas.subprocess_kwargs())  # type: ignore[arg-type]
        try:
            _wait_port(self.port, 10.0)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}") from None
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.directory / "pgbouncer.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # pgbouncer: SIGINT = safe shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

