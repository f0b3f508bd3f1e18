"""The `fraiseshm` command: attach to a live arena by name and look, check or act.

    fraiseshm [--arena NAME] stats [--json]     per-process and arena figures
    fraiseshm [--arena NAME] top [--interval S] live per-process view, fits the terminal; --json: JSON lines
    fraiseshm [--arena NAME] check              fsck of every layout invariant; exit 1 on problems
    fraiseshm [--arena NAME] invalidate TAG...  e.g. r:public.tb_user:42  t:public.tb_post  query:users
    fraiseshm [--arena NAME] flush              invalidate everything
    fraiseshm audit [--dsn DSN] [--limit N]     recent cascade failures from PostgreSQL
    fraiseshm schema check [--dsn] [--sdl]      the start-up check of the SDL against the database;
                                                per type, the tables followed precisely / coarsely
    fraiseshm db install [--server-role ROLE]   install/upgrade the SQL kit (schema fraiseshm)
    fraiseshm db uninstall                      remove it (the user's tables and rows stay)
    fraiseshm db track TABLE [--key COLUMN]     attach the change triggers to a table
    fraiseshm db untrack TABLE                  remove them
    fraiseshm db status [--json] [--show-key]   kit version, tracked tables and their keys
    fraiseshm db grant ROLE [--sdl PATH]        the server role's privileges: the kit's part, SELECT
                                                on the SDL's views, EXECUTE on its functions

Exit codes: 0 fine, 1 check found problems, 2 no arena / another layout
version / bad configuration / audit trail unavailable.
`schema check` exits 1 when the SDL does not match the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fraiseshm.arena import Arena
from fraiseshm.arena.layout import LAYOUT_VERSION
from fraiseshm.config import load_settings
from fraiseshm.errors import ArenaLayoutMismatch, ArenaNotFound, ConfigError
from fraiseshm.metrics import figures

EXIT_PROBLEMS = 1
EXIT_UNAVAILABLE = 2


class CliError(Exception):
    """Printed as `fraiseshm: <message>` with exit code 2."""


def _attach(name: str) -> Arena:
    try:
        return Arena.attach(name)
    except ArenaNotFound as exc:
        raise CliError(f"{exc.strerror or exc} (pass --arena NAME, or set FRAISESHM_ARENA_NAME)") from None
    except ArenaLayoutMismatch as exc:
        raise CliError(
            f"cannot read arena {name}: {exc} (this fraiseshm reads layout version {LAYOUT_VERSION}; "
            "use the fraiseshm installed with the running server)"
        ) from None


def _count(n: int) -> str:
    """Exact below 100,000, then 3 significant figures (123.5M): the exact value is in --json."""
    if n < 100_000:
        return f"{n:,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# --- tables that fit the terminal -----------------------------------------------------

class Column:
    """A table column: header, priority (1 = kept longest), and how its cells may shrink."""

    __slots__ = ("header", "priority", "justify", "wrap")

    def __init__(self, header: str, priority: int, justify: str = "right", wrap: bool = False) -> None:
        self.header, self.priority, self.justify, self.wrap = header, priority, justify, wrap


_WRAP_MIN = 12  # columns of a wrapping cell, at least: narrower folds every few characters
_GAP = 2  # columns between two cells (SIMPLE_HEAD, collapsed padding)


def fit_table(console: Console, columns: Sequence[Column], rows: Sequence[tuple[Sequence[str], str | None]],
              title: str) -> Table:
    """A rich Table that fits console.width: cells of wrapping columns (long text) fold
    into the room left, and while even that is too wide the lowest-priority column is
    dropped; the caption says which (--json has them all). Numbers and other short
    cells are never cut ("15…" helps nobody)."""
    natural = [max([len(c.header), *(len(cells[i]) for cells, _ in rows)]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))

    def width() -> int:
        return sum(min(natural[i], _WRAP_MIN) if columns[i].wrap else natural[i] for i in shown) \
            + _GAP * (len(shown) - 1)

    while width() > console.width and len(shown) > 1:
        shown.remove(max(shown, key=lambda i: (columns[i].priority, i)))
    table = Table(title=title, title_justify="left", caption_justify="left", pad_edge=False,
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for i in shown:
        c = columns[i]
        table.add_column(c.header, justify=c.justify, no_wrap=not c.wrap,  # type: ignore[arg-type]
                         overflow="fold" if c.wrap else "ellipsis", ratio=1 if c.wrap else None,
                         min_width=min(natural[i], _WRAP_MIN) if c.wrap else natural[i])
    for cells, style in rows:
        table.add_row(*[Text(cells[i]) for i in shown], style=style)  # Text: a "[" in a cell is not markup
    dropped = [columns[i].header for i in range(len(columns)) if i not in shown]
    if dropped:
        table.caption = f"hidden at {console.width} columns: {' '.join(dropped)} (--json has all)"
    return table


# --- stats ------------------------------------------------------------------------

# counter: (column header, priority); the lower the priority, the longer it stays at narrow widths
_COLUMNS = {
    "requests": ("req", 1), "hits": ("hit", 2), "misses": ("miss", 2), "db_executions": ("db", 3),
    "evictions": ("evict", 3), "cascade_failures": ("cfail", 3), "errors": ("err", 3), "mutations": ("mut", 4),
    "bypasses": ("bypass", 5), "coalesce_followed": ("follow", 5), "invalidations": ("inval", 6),
    "coalesce_takeovers": ("takeover", 7),
}


def _stats_table(console: Console, figs: dict[str, Any], rates: dict[int, Any] | None = None,
                 max_rows: int | None = None) -> Table:
    """Per-process rows, then exited and total; rates (top): req/s and cpu per pid.
    max_rows: at most that many process rows (top on a short terminal: busiest first)."""
    columns = [Column("pid", 0, "right")]
    if rates is not None:
        columns += [Column("req/s", 1), Column("cpu", 2)]
    columns += [Column(h, prio) for h, prio in _COLUMNS.values()]
    columns.append(Column("hit%", 1))
    procs = figs["processes"]
    if rates is not None:
        procs = sorted(procs, key=lambda p: -(rates.get(p["pid"]) or (0.0, None))[0])
    hidden = 0
    if max_rows is not None and len(procs) > max_rows:
        keep = max(1, max_rows - 1)  # and one row saying how many more
        hidden, procs = len(procs) - keep, procs[:keep]
    rows: list[tuple[Sequence[str], str | None]] = []
    blank = ["", ""] if rates is not None else []
    for p in procs:
        row = [str(p["pid"])]
        if rates is not None:
            r = rates.get(p["pid"])
            row += [f"{r[0]:,.0f}" if r else "-", f"{r[1]:.2f}" if r and r[1] is not None else "-"]
        rows.append(([*row, *[_count(p["counters"][c]) for c in _COLUMNS], _pct(p["hit_rate"])], None))
    if hidden:
        rows.append(([f"+{hidden}", *blank, *[""] * len(_COLUMNS), ""], "dim"))
    archived = figs["archived"]
    if any(archived[c] for c in _COLUMNS):
        rows.append((["exited", *blank, *[_count(archived[c]) for c in _COLUMNS],
                      _pct(figures.hit_rate(archived))], "dim"))
    total_rate = [f"{sum(r[0] for r in rates.values()):,.0f}", ""] if rates else blank
    rows.append((["total", *total_rate, *[_count(figs["totals"][c]) for c in _COLUMNS], _pct(figs["hit_rate"])],
                 "bold"))
    title = f"fraiseshm {figs['name']}: {figs['workers']} processes"
    return fit_table(console, columns, rows, title)


def _arena_lines(figs: dict[str, Any]) -> Text:
    """The arena in short lines that wrap at word boundaries on a narrow terminal."""
    lat = figs["latency"]
    mean = lat["sum_seconds"] / lat["count"] * 1e3 if lat["count"] else 0.0
    text = Text(
        f"arena {_mib(figs['used_bytes'])} of {_mib(figs['capacity_bytes'])} ({_pct(figs['fill_ratio'])}), "
        f"{figs['entries']:,} entries, oldest {figs['oldest_entry_age_seconds']:.0f} s, seq {figs['global_seq']:,}\n"
        f"db executions {lat['count']:,}, mean {mean:.2f} ms; wipes {figs['lock_wipes']} lock, "
        f"{figs.get('corruption_wipes', 0)} corrupt; checksum failures {figs['checksum_failures']}\n"
        + _listener_words(figs)
    )
    if not figs["linked"]:
        text.append("\nsegment is UNLINKED from /dev/shm", style="bold red")
    return text


def _listener_words(figs: dict[str, Any]) -> str:
    pid, heard = figs.get("listener_pid"), figs.get("listener")
    if pid is None:
        return "listener: none (plain-SQL writes are not invalidated)"
    words = f"listener: pid {pid}"
    if heard is not None and heard["heard"]:
        mean = heard["lag_sum_seconds"] / heard["heard"] * 1e3
        words += (f", heard {_count(heard['heard'])} changes, lag mean {mean:.1f} ms, "
                  f"last {heard['last_lag_seconds'] * 1e3:.1f} ms")
    return words


def cmd_stats(arena: Arena, args: argparse.Namespace, console: Console) -> int:
    figs = figures.read(arena)
    if args.json:
        sys.stdout.write(json.dumps(figs, indent=2, sort_keys=True) + "\n")
        return 0
    console.print(_stats_table(console, figs))
    console.print(_arena_lines(figs), highlight=False)
    return 0


def _rates(prev: dict[str, Any], now: dict[str, Any], dt: float) -> dict[int, Any]:
    """pid -> (req/s, cpu cores) between two reads; pids new since prev have none."""
    before = {p["pid"]: p for p in prev["processes"]}
    rates: dict[int, Any] = {}
    for p in now["processes"]:
        b = before.get(p["pid"])
        if b is None:
            continue
        cpu = None
        if p["cpu_seconds"] is not None and b["cpu_seconds"] is not None:
            cpu = (p["cpu_seconds"] - b["cpu_seconds"]) / dt
        rates[p["pid"]] = ((p["counters"]["requests"] - b["counters"]["requests"]) / dt, cpu)
    return rates


_TOP_CHROME = 11  # lines of top around the process rows: title, header, rule, exited, total, caption, arena


def cmd_top(arena: Arena, args: argparse.Namespace, console: Console) -> int:
    """Per-process rates between two reads of the arena, refreshed every --interval seconds;
    --json: one JSON object per refresh (JSON lines) for scripts."""
    prev, prev_t = figures.read(arena), time.monotonic()
    rounds = 0

    def view(figs: dict[str, Any], rates: dict[int, Any]) -> Group:
        max_rows = max(1, console.height - _TOP_CHROME)
        return Group(_stats_table(console, figs, rates, max_rows=max_rows), _arena_lines(figs))

    live = None if args.json else Live(view(prev, {}), console=console, auto_refresh=False, screen=False,
                                       vertical_overflow="crop")
    try:
        if live is not None:
            live.start(refresh=True)
        while args.iterations == 0 or rounds < args.iterations:
            time.sleep(args.interval)  # the refresh period itself, not a synchronisation
            now, now_t = figures.read(arena), time.monotonic()
            rates = _rates(prev, now, now_t - prev_t)
            if live is not None:
                live.update(view(now, rates), refresh=True)
            else:
                out = {"interval_seconds": round(now_t - prev_t, 3), "workers": now["workers"],
                       "hit_rate": now["hit_rate"], "fill_ratio": now["fill_ratio"],
                       "processes": [{"pid": pid, "requests_per_second": round(r[0], 1),
                                      "cpu": None if r[1] is None else round(r[1], 3)} for pid, r in rates.items()]}
                sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
                sys.stdout.flush()
            prev, prev_t = now, now_t
            rounds += 1
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 0


# --- check / invalidate / flush ---------------------------------------------------------------


def cmd_check(arena: Arena, _args: argparse.Namespace, console: Console) -> int:
    problems = arena.check()
    if not problems:
        console.print(f"arena {arena.name}: clean (every layout invariant holds)")
        return 0
    for p in problems:
        console.print(f"[red]{p}[/]", highlight=False)
    console.print(f"arena {arena.name}: {len(problems)} problem(s)")
    return EXIT_PROBLEMS


def cmd_invalidate(arena: Arena, args: argparse.Namespace, console: Console) -> int:
    seq = arena.invalidate(args.tags)
    console.print(f"invalidated {len(args.tags)} tag(s) at sequence {seq}", highlight=False)
    return 0


def cmd_flush(arena: Arena, _args: argparse.Namespace, console: Console) -> int:
    seq = arena.flush()
    console.print(f"flushed arena {arena.name}: entries filled before sequence {seq} are invalid", highlight=False)
    return 0


# --- audit ------------------------------------------------------------------------------------

AUDIT_TABLE = "fraiseshm.audit"
_TIME_COLUMNS = ("at", "recorded_at", "created_at", "ts", "time")
_TABLE_COLUMNS = ("id", "at", "mutation", "transaction_id", "verdict", "tags", "details")


async def _audit_rows(dsn: str, limit: int) -> tuple[list[str], list[dict[str, Any]]] | None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", AUDIT_TABLE) is None:
            return None
        cols = [r["column_name"] for r in await conn.fetch(
            "SELECT attname AS column_name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", AUDIT_TABLE)]
        # The audit trail's columns belong to its owner (issue 7): read what is there.
        where = ""
        if "failure" in cols:  # fraiseshm/db/sql/audit.sql: failure boolean, indexed
            where = "WHERE failure"
        elif "verdict" in cols:
            where = "WHERE verdict::text NOT IN ('ok', 'OK', 'pass')"
        order = "id" if "id" in cols else next((c for c in _TIME_COLUMNS if c in cols), None)
        sql = f"SELECT * FROM {AUDIT_TABLE} {where}" + (f" ORDER BY {order} DESC" if order else "") + " LIMIT $1"
        rows = [{k: (v if isinstance(v, int | float | bool | str | None) else str(v)) for k, v in r.items()}
                for r in await conn.fetch(sql, limit)]
        return cols, rows
    finally:
        await conn.close()


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    dsn = args.dsn or load_settings().database_dsn
    if dsn == "embedded":
        raise CliError("the database is the embedded cluster: pass --dsn postgresql://... "
                       "(the server logs 'embedded PostgreSQL ready at ...')")
    try:
        found = asyncio.run(_audit_rows(dsn, args.limit))
    except (OSError, TimeoutError) as exc:
        raise CliError(f"cannot reach PostgreSQL at {dsn}: {exc}") from None
    except Exception as exc:  # asyncpg's errors share no base with OSError
        raise CliError(f"PostgreSQL at {dsn}: {type(exc).__name__}: {exc}") from None
    if found is None:
        raise CliError(f"no audit trail: table {AUDIT_TABLE} does not exist in {dsn} "
                       "(`fraiseshm db install` creates it; cascade failures are still counted: "
                       "see fraiseshm_cascade_failures_total)")
    cols, rows = found
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return 0
    if not rows:
        console.print(f"no cascade failures recorded in {AUDIT_TABLE}")
        return 0
    shown = [c for c in _TABLE_COLUMNS if c in cols] or cols  # the full rows: --json
    columns = [Column(c, *_AUDIT_LAYOUT.get(c, (9, "left", True))) for c in shown]
    cells: list[tuple[Sequence[str], str | None]] = [([_audit_cell(c, r.get(c)) for c in shown], None) for r in rows]
    console.print(fit_table(console, columns, cells, f"recent cascade failures ({len(rows)})"))
    return 0


# column: (priority, justify, may wrap); mutation, time and verdict say what happened
_AUDIT_LAYOUT = {"at": (1, "left", False), "mutation": (1, "left", False), "verdict": (2, "left", False),
                 "details": (3, "left", True), "tags": (4, "left", True), "transaction_id": (5, "right", False),
                 "id": (6, "right", False)}


def _audit_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    if column in _TIME_COLUMNS and len(text) >= 19:
        return text[5:19].replace("T", " ")  # "12-01 17:24:04": the year and sub-seconds are in --json
    if column in ("tags", "details"):  # jsonb: words that wrap at spaces rather than one long token
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        return _words(decoded)
    return text


def _words(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_words(v) for v in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_words(v)}" for k, v in value.items()) or "-"
    return str(value)


# --- schema check -------------------------------------------------------------------------------


def cmd_schema_check(args: argparse.Namespace, console: Console) -> int:
    """The master's start-up check as a command: exit 1 on a problem, with the same message."""
    from fraiseshm.errors import SchemaError
    from fraiseshm.graphql.check import load_and_check

    settings = load_settings()
    dsn = args.dsn or settings.database_dsn
    sdl = args.sdl or settings.schema_sdl
    if dsn == "embedded":
        raise CliError("the database is the embedded cluster: pass --dsn postgresql://... "
                       "(the server logs 'embedded PostgreSQL ready at ...')")
    try:
        _served, result = asyncio.run(load_and_check(sdl, dsn, connect_timeout=settings.db_connect_timeout,
                                                   request_role=settings.db_role))
    except SchemaError as exc:
        Console(stderr=True).print(f"fraiseshm: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_PROBLEMS
    for warning in result.warnings:
        console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{sdl}: ok against {dsn}; dependencies per type:", highlight=False, markup=False, soft_wrap=True)
    for line in result.report:
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    return 0
# --- db: the SQL kit ---------------------------------------------------------------------------


async def _db(args: argparse.Namespace, dsn: str, console: Console) -> int:
    import asyncpg

    from fraiseshm.db import kit

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if args.db_command == "install":
            version = await kit.install(conn, server_role=args.server_role,
                                        on_message=lambda m: console.print(m, highlight=False, markup=False))
            granted = f"; granted its part to role {args.server_role}" if args.server_role else ""
            console.print(f"fraiseshm kit version {version} installed in schema fraiseshm{granted}", highlight=False)
        elif args.db_command == "uninstall":
            await kit.uninstall(conn)
            console.print("fraiseshm kit removed (triggers, schema fraiseshm); your tables are untouched",
                          highlight=False)
        elif args.db_command == "track":
            for table in args.tables:
                summary, notices = await kit.track(conn, table, args.key)
                for notice in notices:
                    console.print(notice, highlight=False, markup=False)
                console.print(f"tracking {summary}", highlight=False)
        elif args.db_command == "grant":
            from fraiseshm.graphql.schema import load_schema

            served = load_schema(args.sdl or load_settings().schema_sdl)
            views = [e.view for e in served.entities.values()]
            functions = [m.function for m in served.mutations.values()]
            await kit.grant(conn, args.role, views, functions)
            console.print(f"granted to {args.role}: the kit's part, SELECT on {', '.join(sorted(set(views)))}, "
                          f"EXECUTE on {', '.join(sorted(set(functions)))}", highlight=False)
        elif args.db_command == "untrack":
            for table in args.tables:
                found = await kit.untrack(conn, table)
                console.print(f"{table}: {'triggers removed' if found else 'was not tracked'}", highlight=False)
        else:
            st = await kit.status(conn)
            key = await kit.notify_key(conn) if args.show_key and st.version is not None else None
            if args.json:
                out: dict[str, Any] = {"version": st.version, "tracked": [vars_of(t) for t in st.tracked]}
                if key is not None:
                    out["notify_key"] = key
                sys.stdout.write(json.dumps(out, indent=2) + "\n")
                return 0 if st.version is not None else EXIT_UNAVAILABLE
            if st.version is None:
                raise CliError("the fraiseshm kit is not installed in this database: run `fraiseshm db install`")
            table = Table(title=f"fraiseshm kit version {st.version}: {len(st.tracked)} tracked tables",
                          title_justify="left")
            for col in ("table", "key column", "key type", "triggers"):
                table.add_column(col)
            for t in st.tracked:
                table.add_row(t.table, t.key_column or "(none: table-level tags)", t.key_type or "-",
                              "ok" if t.complete else "INCOMPLETE or disabled")
            console.print(table)
            if key is not None:
                console.print(f"notify key: {key}", highlight=False)
        return 0
    finally:
        await conn.close()


def vars_of(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__slots__}


def cmd_db(args: argparse.Namespace, console: Console) -> int:
    settings = load_settings()
    dsn = args.dsn or settings.database_dsn
    if dsn == "embedded":
        from fraiseshm.db.embedded import EmbeddedCluster

        cluster = EmbeddedCluster.from_settings(settings)
        if not cluster.is_running():
            raise CliError(f"the embedded cluster in {cluster.directory} is not running (`make run` starts it "
                           "and installs the kit): pass --dsn postgresql://... for another database")
        dsn = cluster.dsn
    try:
        return asyncio.run(_db(args, dsn, console))
    except (OSError, TimeoutError) as exc:
        raise CliError(f"cannot reach PostgreSQL at {dsn}: {exc}") from None
    except CliError:
        raise
    except Exception as exc:  # asyncpg's errors share no base with OSError
        hint = getattr(exc, "hint", None)
        raise CliError(f"{type(exc).__name__}: {exc}" + (f" (hint: {hint})" if hint else "")) from None


# --- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraiseshm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arena", help="shared-memory arena name, e.g. /fraiseshm (default: Settings.arena_name)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("stats", help="per-process and arena figures")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("top", help="live per-process view")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (0: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per refresh (JSON lines), no table")
    sub.add_parser("check", help="fsck of the arena's invariants; exit 1 on problems")
    p = sub.add_parser("invalidate", help="invalidate tags (r:public.tb_user:42, t:public.tb_post, query:users)")
    p.add_argument("tags", nargs="+", metavar="TAG")
    sub.add_parser("flush", help="invalidate every entry")
    p = sub.add_parser("audit", help="recent cascade failures from PostgreSQL")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: Settings.database_dsn)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("schema", help="the SDL against the database")
    schema_sub = p.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")
    p = schema_sub.add_parser("check", help="the start-up check; per type, tables followed precisely/coarsely; "
                                            "exit 1 on problems")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: Settings.database_dsn)")
    p.add_argument("--sdl", help="SDL file (default: Settings.schema_sdl)")
    p = sub.add_parser("db", help="the SQL kit in your database (schema fraiseshm)")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: Settings.database_dsn)")
    db = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    q = db.add_parser("install", help="install or upgrade the kit (idempotent)")
    q.add_argument("--server-role", help="grant this role what the server needs from the kit")
    db.add_parser("uninstall", help="remove the kit; your tables and rows stay")
    q = db.add_parser("track", help="attach the change triggers to tables")
    q.add_argument("tables", nargs="+", metavar="TABLE")
    q.add_argument("--key", help="the column naming a row (default: unique id, else the primary key)")
    q = db.add_parser("grant", help="grant a server role the kit's part and the SDL's views and functions")
    q.add_argument("role")
    q.add_argument("--sdl", help="the SDL file (default: Settings.schema_sdl)")
    q = db.add_parser("untrack", help="remove the change triggers from tables")
    q.add_argument("tables", nargs="+", metavar="TABLE")
    q = db.add_parser("status", help="kit version and tracked tables")
    q.add_argument("--json", action="store_true")
    q.add_argument("--show-key", action="store_true", help="print the notification key (FRAISESHM_NOTIFY_SECRET)")
    return parser


_COMMANDS = {"stats": cmd_stats, "top": cmd_top, "check": cmd_check, "invalidate": cmd_invalidate, "flush": cmd_flush}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        if args.command == "audit":
            return cmd_audit(args, console)
        if args.command == "schema":
            return cmd_schema_check(args, console)
        if args.command == "db":
            return cmd_db(args, console)
        name = args.arena or load_settings().arena_name
        arena = _attach(name)
        try:
            return _COMMANDS[args.command](arena, args, console)
        finally:
            arena.close()
    except (CliError, ConfigError) as exc:
        err.print(f"fraiseshm: {exc}", highlight=False, markup=False)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
