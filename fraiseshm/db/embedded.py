"""A private PostgreSQL cluster for `make run` (database_dsn = "embedded") and the tests.

``EmbeddedCluster(directory, port).ensure(sql_files, seed_users)`` is idempotent:
it runs initdb if the directory holds no cluster, starts the server unless it
already runs (a running one is reused), creates the database ``fraiseshm``,
loads the SQL files once (again when their content changes), seeds an empty
database, and returns the DSN ``postgresql://fraiseshm@127.0.0.1:PORT/fraiseshm``.

Directory layout (owned by the user the server runs as, mode 0700)::

    <dir>/data/              PGDATA; its unix socket lives here too
    <dir>/port               the port chosen (port=0 picks a free one once)
    <dir>/postgresql.log     server log
    <dir>/schema.sha1        marker: hash of the SQL files last loaded
    <dir>/.lock              flock held while ensure() runs (one caller at a time)

PostgreSQL refuses to run as root. As root, initdb, pg_ctl and postgres run as
the ``postgres`` system user if it exists, else as a ``fraiseshm`` system user
created with useradd --system. Every parent of the directory must be
traversable by that user: a directory under /tmp is, one under /root is not.

SECURITY: the cluster trusts every local connection (no password), listens on
127.0.0.1 only and is meant for development and tests, never for real data.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from fraiseshm.db.kit import INSTALL_FILES
from fraiseshm.errors import ConfigError, DatabaseUnavailable, FraiseshmError, SchemaError

if TYPE_CHECKING:
    from fraiseshm.config import Settings

log = logging.getLogger("fraiseshm.db.embedded")

DB_NAME = "fraiseshm"
DB_USER = "fraiseshm"  # the cluster's bootstrap superuser (initdb -U)
SYSTEM_USER = "fraiseshm"  # created when running as root and `postgres` does not exist
START_TIMEOUT = 60  # seconds pg_ctl -w waits for the server to accept connections
_SOCKET_PATH_MAX = 107  # sun_path, minus the NUL


def find_bindir() -> Path:
    """The PostgreSQL server binaries: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/<version>/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and candidate.parent.name.replace(".", "").isdigit():
            versions.append((tuple(int(p) for p in candidate.parent.name.split(".")), candidate))
    if versions:
        return max(versions)[1]
    raise DatabaseUnavailable(
        "PostgreSQL server binaries not found (no initdb next to `pg_config --bindir`, none in "
        "/usr/lib/postgresql/*/bin); install them: apt-get install postgresql"
    )


def default_directory() -> Path:
    """One cluster per checkout and user: <tmp>/fraiseshm-pg-<uid>-<sha1(cwd)[:10]>."""
    digest = hashlib.sha1(str(Path.cwd().resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"fraiseshm-pg-{os.getuid()}-{digest}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the postmaster does: a port whose last connections linger in
        # TIME_WAIT is free for it, only a listener makes it taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _RunAs:
    """The unprivileged account the server processes run as (None: ourselves)."""

    def __init__(self, user: pwd.struct_passwd | None) -> None:
        self.user = user
        self.name = user.pw_name if user else getpass.getuser()
        self.uid = user.pw_uid if user else os.getuid()
        self.gid = user.pw_gid if user else os.getgid()
        self.gids = set(os.getgrouplist(self.name, self.gid)) if user else set(os.getgroups()) | {self.gid}

    @classmethod
    def pick(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None)
        for name in ("postgres", SYSTEM_USER):
            try:
                return cls(pwd.getpwnam(name))
            except KeyError:
                continue
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--user-group", SYSTEM_USER],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"running as root, PostgreSQL needs an unprivileged user; `useradd --system "
                f"{SYSTEM_USER}` failed: {result.stderr.strip()}; create a system user "
                f"'postgres' or '{SYSTEM_USER}' yourself"
            )
        log.info("created system user %s to run the embedded PostgreSQL", SYSTEM_USER)
        return cls(pwd.getpwnam(SYSTEM_USER))

    def subprocess_kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can_traverse(self, path: Path) -> bool:
        st = path.stat()
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


class EmbeddedCluster:
    """A private PostgreSQL cluster in one directory. See the module docstring."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        port: int = 0,
        *,
        fast: bool = False,
        bindir: str | os.PathLike[str] | None = None,
    ) -> None:
        # fast: fsync and full_page_writes off. Tests only: a crash of the
        # machine (not of PostgreSQL) can corrupt such a cluster.
        self.directory = Path(directory).absolute() if directory else default_directory()
        self.data_dir = self.directory / "data"
        self.log_file = self.directory / "postgresql.log"
        self.fast = fast
        self._requested_port = port
        self._bindir = Path(bindir) if bindir else None
        self._runas: _RunAs | None = None

    # --- public API ---------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedCluster:
        return cls(settings.embedded_dir or None, settings.embedded_port)

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    @property
    def port(self) -> int:
        """The configured port, else the one remembered in <dir>/port (0 if none yet)."""
        if self._requested_port:
            return self._requested_port
        try:
            return int((self.directory / "port").read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    @property
    def dsn(self) -> str:
        return self.dsn_of(DB_NAME)

    def dsn_of(self, database: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self, name: str, owner: str | None = None) -> str:
        """An empty database `name` (dropped first if an earlier run left it); its DSN. For tests."""
        # One statement per call: psql -c runs its string as one transaction.
        self._psql(["-c", f"DROP DATABASE IF EXISTS {name}"], database="postgres")
        self._psql(["-c", f"CREATE DATABASE {name}" + (f" OWNER {owner}" if owner else "")], database="postgres")
        return self.dsn_of(name)

    def ensure(self, sql_files: Sequence[str | os.PathLike[str]] = (), seed_users: int = 0) -> str:
        """Make the cluster exist, run, hold the schema and (if empty) seed data; return the DSN."""
        sql_paths = [Path(p) for p in sql_files]
        for path in sql_paths:
            if not path.is_file():
                raise ConfigError(f"schema_sql: {path} does not exist (cwd {Path.cwd()})")
        self._prepare_directory()
        with self._locked():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if not self.is_running():
                self.start()
            created = self._ensure_database()
            if sql_paths:
                self._load_schema(sql_paths, force=created)
            if seed_users > 0:
                self._seed_if_empty(seed_users)
        return self.dsn

    def is_running(self) -> bool:
        """True when a postmaster of THIS data directory is alive (stale pid files say False)."""
        pid = self._postmaster_pid()
        return pid is not None and self._is_our_postmaster(pid)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (pg_ctl -w)."""
        if self.is_running():
            return
        self._remove_stale_pid_files()
        port = self._choose_port()
        self._write_config(port)
        result = self._run(
            [self.bindir / "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT), "-s",
             "-D", self.data_dir, "-l", self.log_file],
            check=False,
        )
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"embedded PostgreSQL in {self.data_dir} did not start on port {port} "
                f"(pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                f"last log lines of {self.log_file}:\n{self._log_tail()}"
            )
        log.info("embedded PostgreSQL running: %s", self.dsn)

    def stop(self) -> None:
        """pg_ctl stop -m fast (no-op when not running)."""
        if not self.is_running():
            return
        result = self._run(
            [self.bindir / "pg_ctl", "stop", "-w", "-s", "-m", "fast", "-t", str(START_TIMEOUT),
             "-D", self.data_dir],
            check=False,
        )
        if result.returncode != 0 and self.is_running():
            raise DatabaseUnavailable(
                f"embedded PostgreSQL in {self.data_dir} did not stop: {result.stderr.strip()}"
            )

    def psql(self, sql: str, database: str = DB_NAME) -> str:
        """Run SQL with psql (unaligned, tuples only); return stdout. For tests and operators."""
        return self._psql(["-c", sql], database=database)

    # --- steps --------------------------------------------------------------

    def _prepare_directory(self) -> None:
        runas = self._user()
        for parent in reversed(self.directory.parents):
            if parent.exists() and not runas.can_traverse(parent):
                mode = stat.S_IMODE(parent.stat().st_mode)
                raise ConfigError(
                    f"embedded_dir {self.directory}: its parent {parent} (mode {mode:04o}) is not "
                    f"traversable by user {runas.name}, who runs the embedded PostgreSQL; choose a "
                    f"directory under {tempfile.gettempdir()} (FRAISESHM_EMBEDDED_DIR) or leave it empty"
                )
        socket_path = self.data_dir / ".s.PGSQL.65535"
        if len(str(socket_path)) > _SOCKET_PATH_MAX:
            raise ConfigError(
                f"embedded_dir {self.directory} is too long for a unix socket path "
                f"({len(str(socket_path))} > {_SOCKET_PATH_MAX} bytes); choose a shorter directory"
            )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if runas.user is not None:
            os.chown(self.directory, runas.uid, runas.gid)
        os.chmod(self.directory, 0o700)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _initdb(self) -> None:
        if self.data_dir.exists():  # a half-done initdb: start over
            shutil.rmtree(self.data_dir)
        cmd: list[str | Path] = [
            self.bindir / "initdb", "-D", self.data_dir, "-U", DB_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-instructions",
        ]
        if self.fast:
            cmd.append("--no-sync")
        result = self._run(cmd, check=False)
        if result.returncode != 0:
            raise DatabaseUnavailable(
                f"initdb {self.data_dir} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'fraiseshm.conf'\n")
        log.info("initialised embedded PostgreSQL cluster in %s", self.data_dir)

    def _write_config(self, port: int) -> None:
        # Rewritten on every start, so a cluster created by the tests (fast)
        # gets fsync back when `make run` reuses its directory, and vice versa.
        # fast: no fsync, but synchronous_commit stays on, so a committed row
        # survives a crash of the server (tests kill it) though not of the machine.
        durability = "fsync = off\nfull_page_writes = off\n" if self.fast else ""
        conf = (
            "# Written by fraiseshm.db.embedded on every start; edits are lost.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.data_dir}'\n"
            "max_connections = 200\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            "log_min_duration_statement = 1000\n"
            # The bootstrap role is named fraiseshm, like the kit's schema: with
            # the default "$user", public every CREATE would land in the kit.
            "search_path = 'public'\n"
            + durability
        )
        path = self.data_dir / "fraiseshm.conf"
        path.write_text(conf)
        runas = self._user()
        if runas.user is not None:
            os.chown(path, runas.uid, runas.gid)

    def _choose_port(self) -> int:
        port = self.port
        if self._requested_port:
            return port
        if port == 0 or _port_in_use(port):
            if port:
                log.warning("embedded PostgreSQL: remembered port %d is taken; picking another", port)
            port = _free_port()
            (self.directory / "port").write_text(f"{port}\n")
        return port

    def _ensure_database(self) -> bool:
        """Create the database if missing; True if it was created."""
        exists = self._psql(
            ["-c", f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], database="postgres"
        )
        if exists.strip():
            return False
        self._psql(["-c", f"CREATE DATABASE {DB_NAME}"], database="postgres")
        return True

    def load_schema(self, sql_files: Sequence[str | os.PathLike[str]]) -> None:
        """Load the SQL files now, even if they were loaded before (resets the blog schema)."""
        self._load_schema([Path(p) for p in sql_files], force=True)

    def _load_schema(self, sql_paths: Sequence[Path], *, force: bool = False) -> None:
        # The kit first: the example schemas track their tables and call its helpers.
        sql_paths = [*INSTALL_FILES, *sql_paths]
        digest = hashlib.sha1()
        for path in sql_paths:
            digest.update(str(path.resolve()).encode() + b"\0" + path.read_bytes() + b"\0")
        marker = self.directory / "schema.sha1"
        if not force and marker.exists() and marker.read_text().strip() == digest.hexdigest():
            return
        for path in sql_paths:
            log.info("loading %s into the embedded database", path)
            try:
                self._psql(["-1", "-f", str(path.resolve())])
            except FraiseshmError as exc:
                raise SchemaError(f"loading {path} failed: {exc}") from None
        marker.write_text(digest.hexdigest() + "\n")

    def _seed_if_empty(self, seed_users: int) -> None:
        """SELECT fn_seed(seed_users) when the example has one and its tracked tables are all empty."""
        has_seed = self._psql(["-c", "SELECT to_regprocedure('fn_seed(integer,integer,integer)') IS NOT NULL"]).strip()
        if has_seed != "t":
            log.warning("embedded database: no fn_seed(int, int, int); not seeding")
            return
        tables = self._psql(["-c", "SELECT tbl FROM fraiseshm.tracked_tables()"]).split()
        for table in tables:
            if self._psql(["-c", f"SELECT EXISTS (SELECT 1 FROM {table})"]).strip() == "t":
                return
        log.info("seeding the embedded database: fn_seed(%d)", seed_users)
        self._psql(["-c", f"SELECT fn_seed({int(seed_users)})"])
        if self._psql(["-c", "SELECT to_regprocedure('fn_seed_drafts()') IS NOT NULL"]).strip() == "t":
            self._psql(["-c", "SELECT fn_seed_drafts()"])  # examples/blog/private.sql

    # --- processes ----------------------------------------------------------

    def _user(self) -> _RunAs:
        if self._runas is None:
            self._runas = _RunAs.pick()
        return self._runas

    def _run(self, cmd: Sequence[str | Path], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the unprivileged user, in the cluster directory."""
        runas = self._user()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "TZ": "UTC",
            "HOME": str(self.directory),
        }
        result = subprocess.run(
            [str(c) for c in cmd],
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **runas.subprocess_kwargs(),  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            raise DatabaseUnavailable(f"{cmd[0]} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def _psql(self, args: Sequence[str], database: str = DB_NAME) -> str:
        if not self.port:
            raise DatabaseUnavailable(f"embedded PostgreSQL in {self.directory} has never been started")
        cmd = [
            str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", database, *args,
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode == 2:  # psql: connection failed
            raise DatabaseUnavailable(
                f"embedded PostgreSQL on port {self.port} is unreachable: {result.stderr.strip()}"
            )
        if result.returncode != 0:
            raise FraiseshmError(f"psql failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # --- pid files ----------------------------------------------------------

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        # After a crash or a reboot, postmaster.pid may name a pid that now
        # belongs to another process: check it is a postgres of this PGDATA.
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        if not cmdline or not Path(cmdline[0]).name.startswith("postgres"):
            return False
        data = str(self.data_dir)
        return any(arg.rstrip("/") == data for arg in cmdline) or f"-D{data}" in cmdline

    def _remove_stale_pid_files(self) -> None:
        # The postmaster itself ignores a lock file whose pid is dead, but not
        # one whose pid was reused by an unrelated process after a crash.
        stale = [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]
        for path in stale:
            try:
                pid = int(path.read_text().split("\n", 1)[0])
            except (FileNotFoundError, ValueError):
                continue
            if not self._is_our_postmaster(pid):
                log.warning("embedded PostgreSQL: removing stale %s (pid %d is not our postmaster)", path, pid)
                path.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read: {exc})"


_DSN_RE = re.compile(r"^postgres(ql)?://")


def resolve_dsn(settings: Settings) -> str:
    """settings.database_dsn, or for "embedded" the DSN of an ensured embedded cluster."""
    if settings.database_dsn != "embedded":
        if not _DSN_RE.match(settings.database_dsn):
            raise ConfigError(
                f"database_dsn: expected postgresql://... or 'embedded', got {settings.database_dsn!r}"
            )
        return settings.database_dsn
    cluster = EmbeddedCluster.from_settings(settings)
    return cluster.ensure([Path(p) for p in settings.schema_sql], seed_users=settings.seed_users)
