"""What PostgreSQL's catalog says about the views and functions the SDL serves.

Read at start (fraiseshm/graphql/check.py, in the gunicorn master before
workers fork; workers inherit it) and again only when the periodic re-check
sees the views' definitions change (``view_definitions``), never per request:

- each served view: its columns and their types (the ``id`` type binds
  ``$1::<type>``, filter columns bind with their own type), ``security_invoker``;
- its *read set*: every table its rows are built from, found through
  ``pg_depend`` from the view's rewrite rule, recursively through nested views
  and SQL-standard function bodies; and the text of every view and function
  on the way (``pg_get_viewdef``, ``pg_get_functiondef``), hashed into the
  schema version;
- its *root table*: the table the view's ``id`` column comes from, read from
  the stored query tree (``pg_rewrite.ev_action``: the target entry's
  ``resorigtbl``/``resorigcol``, which PostgreSQL records for every plain column
  reference), following nested views down to a table;
- the tables some part of the view's SQL reads without an equality join on a
  key or foreign key column (``unjoined_tables``, from the same query tree);
- each table of a read set: single-column keys, single-column foreign keys,
  ``relrowsecurity``, whether the kit's change triggers are attached
  (triggers whose function lives in schema ``fraiseshm``) and the column the
  kit names its rows by (``fraiseshm.tracked_tables()``);
- each mutation function: whether ``fn(jsonb)`` exists, returning jsonb or a composite.

Queries go through ``fetch_column`` (fraiseshm/db/pool.py Database) and return
one jsonb value each, so this module never sees asyncpg.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

KIT_SCHEMA = "fraiseshm"

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]

# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_TRIGGER_INSERT, _TRIGGER_DELETE, _TRIGGER_UPDATE, _TRIGGER_TRUNCATE = 4, 8, 16, 32


@dataclass(frozen=True, slots=True)
class ForeignKey:
    column: str  # the referencing column of the child table
    parent: str  # "public.customers"
    parent_column: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # schema-qualified, as the kit names it in tags: "public.orders"
    keys: frozenset[str]  # columns of single-column PRIMARY KEY / UNIQUE constraints
    primary_key: str | None  # the single-column primary key, if any
    foreign_keys: tuple[ForeignKey, ...]  # single-column FKs to a single-column key
    row_security: bool  # pg_class.relrowsecurity
    tracked_events: frozenset[str]  # INSERT/UPDATE/DELETE/TRUNCATE covered by kit triggers
    kit_key: str | None = None  # the column the kit names rows by (fraiseshm.tracked_tables()); None: unknown
    value_columns: frozenset[str] = frozenset()  # columns every change reports by value (+v:, track(filters))

    @property
    def tracked(self) -> bool:
        return {"INSERT", "UPDATE", "DELETE"} <= self.tracked_events


@dataclass(frozen=True, slots=True)
class View:
    name: str  # as the SDL wrote it
    qualified: str  # "public.v_user"
    kind: str  # "view", "materialized view", "table"
    columns: dict[str, str]  # column -> format_type() ("bigint", "uuid", "text", ...)
    root: tuple[str, str] | None  # (table, column) the id column comes from
    root_problem: str  # why root is None
    reads: tuple[str, ...]  # tables of the read set (recursively through views), sorted
    materialized: tuple[str, ...]  # materialized views read: no trigger can follow them
    security_invoker: bool
    # tables some part of the view's SQL reads without an equality join on a key or a
    # single-column foreign key column (an aggregate over the table, a join on another column)
    unjoined: tuple[str, ...] = ()
    # view column -> where its values come from (plain column references of the top query only)
    origins: dict[str, Origin] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Origin:
    """A view column that is a plain reference to a table column (filters: fraiseshm/graphql/deps.py)."""

    table: str
    column: str
    same_row: bool  # read from the view's root row (the range-table entry its id comes from)
    # (root row's column, this column): equality conjuncts of the top query joining the two rows
    links: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    exists: bool  # some function of that name exists
    signature_ok: bool  # name(jsonb) exists, returning jsonb or a composite type
    found: tuple[str, ...]  # the signatures that exist under that name ("fn(text) -> integer")


@dataclass(slots=True)
class Catalog:
    views: dict[str, View | None] = field(default_factory=dict)  # SDL view name -> View (None: missing)
    tables: dict[str, Table] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    definitions: bytes = b""  # hash of every served view's definition, recursively
    kit_installed: bool = False
    kit_keys_known: bool = False  # the kit says which column names each table's rows (else: FKs must reference it)
    kit_fk_values: bool = False  # the kit's triggers send f:<table>:<fk column>=<parent key> (filters)


# --- the query tree of a view (pg_rewrite.ev_action, nodeToString format) ----------


def _tokens(text: str) -> list[str]:
    """pg_strtok: delimiters are whitespace and ( ) { }; backslash escapes the next character."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\n":
            i += 1
        elif ch in "(){}":
            out.append(ch)
            i += 1
        else:
            buf = []
            while i < n and text[i] not in " \t\n(){}":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            out.append("".join(buf))
    return out


def parse_node_tree(text: str) -> Any:
    """nodeToString text -> nested Python: nodes are dicts (``_node`` = the node name), lists are lists."""
    tokens = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            node: dict[str, Any] = {"_node": tokens[pos]}
            pos += 1
            while tokens[pos] != "}":
                key = tokens[pos]
                pos += 1
                node[key[1:]] = value()
                # a Datum: "<len> [ b0 b1 ... ]"
                if pos < len(tokens) and tokens[pos] == "[":
                    while tokens[pos] != "]":
                        pos += 1
                    pos += 1
            pos += 1
            return node
        if tok == "(":
            items = []
            while tokens[pos] != ")":
                items.append(value())
            pos += 1
            return items
        return None if tok == "<>" else tok

    return value()


def _target_rtindex(tree: Any, column: str) -> int:
    """The top query's range-table index the output column reads (0 if not a plain column)."""
    queries = tree if isinstance(tree, list) else [tree]
    for query in queries:
        for entry in (query.get("targetList") or ()) if isinstance(query, dict) else ():
            if isinstance(entry, dict) and entry.get("resname") == column:
                expr = entry.get("expr")
                if isinstance(expr, dict) and expr.get("_node") == "VAR" and expr.get("varlevelsup") == "0":
                    return int(expr["varno"])
    return 0


def _target_origin(tree: Any, column: str) -> tuple[int, int] | None:
    """(resorigtbl, resorigcol) of the view query's output column, or None."""
    queries = tree if isinstance(tree, list) else [tree]
    for query in queries:
        if not isinstance(query, dict) or query.get("_node") != "QUERY":
            continue
        for entry in query.get("targetList") or ():
            if isinstance(entry, dict) and entry.get("resname") == column and entry.get("resjunk") != "true":
                return int(entry.get("resorigtbl") or 0), int(entry.get("resorigcol") or 0)
    return None


def _queries(node: Any) -> list[dict[str, Any]]:
    """Every QUERY node of a tree: the top one, subqueries in FROM, sublinks, CTEs."""
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("_node") == "QUERY":
                found.append(item)
            stack.extend(v for k, v in item.items() if k != "_node")
    return found


def _strip(expr: Any) -> Any:
    while isinstance(expr, dict) and expr.get("_node") in ("RELABELTYPE", "COERCEVIAIO"):
        expr = expr.get("arg")
    return expr


def _operators(tree: Any) -> set[int]:
    ops: set[int] = set()
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("_node") == "OPEXPR" and item.get("opno"):
                ops.add(int(item["opno"]))
            stack.extend(v for k, v in item.items() if k != "_node")
    return ops


def _joined_columns(query: dict[str, Any], equals: set[int]) -> set[tuple[int, int]]:
    """(rtindex, attnum) of this query level's columns compared with '=' to another column."""
    joined: set[tuple[int, int]] = set()
    quals: list[Any] = []
    stack = [query.get("jointree")]
    while stack:  # WHERE and every JOIN ... ON of this level
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("_node") in ("FROMEXPR", "JOINEXPR"):
                quals.append(item.get("quals"))
                stack.extend([item.get("larg"), item.get("rarg"), *(item.get("fromlist") or [])])
    while quals:  # conjuncts only: an OR does not restrict
        qual = quals.pop()
        if isinstance(qual, list):
            quals.extend(qual)
        elif isinstance(qual, dict) and qual.get("_node") == "BOOLEXPR" and qual.get("boolop") == "and":
            quals.extend(qual.get("args") or [])
        elif isinstance(qual, dict) and qual.get("_node") == "OPEXPR" and int(qual.get("opno") or 0) in equals:
            args = [_strip(a) for a in qual.get("args") or []]
            if len(args) != 2 or not all(isinstance(a, dict) and a.get("_node") == "VAR" for a in args):
                continue
            left, right = ((int(a["varno"]), int(a["varattno"]), int(a["varlevelsup"])) for a in args)
            if left[:1] + left[2:] == right[:1] + right[2:]:
                continue  # a column compared with a column of the same row
            for var in (left, right):
                if var[2] == 0:
                    joined.add((var[0], var[1]))
    return joined


def _equal_pairs(query: dict[str, Any], equals: set[int]) -> set[tuple[tuple[int, int], tuple[int, int]]]:
    """((rtindex, attnum), (rtindex, attnum)) of this level's AND-ed column = column conditions, both ways."""
    pairs: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    quals: list[Any] = []
    stack = [query.get("jointree")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict) and item.get("_node") in ("FROMEXPR", "JOINEXPR"):
            quals.append(item.get("quals"))
            stack.extend([item.get("larg"), item.get("rarg"), *(item.get("fromlist") or [])])
    while quals:
        qual = quals.pop()
        if isinstance(qual, list):
            quals.extend(qual)
        elif isinstance(qual, dict) and qual.get("_node") == "BOOLEXPR" and qual.get("boolop") == "and":
            quals.extend(qual.get("args") or [])
        elif isinstance(qual, dict) and qual.get("_node") == "OPEXPR" and int(qual.get("opno") or 0) in equals:
            args = [_strip(a) for a in qual.get("args") or []]
            if len(args) == 2 and all(isinstance(a, dict) and a.get("_node") == "VAR"
                                      and a.get("varlevelsup") == "0" for a in args):
                left, right = ((int(a["varno"]), int(a["varattno"])) for a in args)
                pairs.add((left, right))
                pairs.add((right, left))
    return pairs


def column_sources(tree: Any, equals: set[int]) -> dict[str, tuple[int, tuple[int, int], set[tuple[int, int]]]]:
    """View column -> (its table's oid, (rtindex, attnum), {(attnum in its row, attnum in the id's row)}
    compared with '='); only plain column references of the top query to a table."""
    queries = tree if isinstance(tree, list) else [tree]
    top = next((q for q in queries if isinstance(q, dict) and q.get("_node") == "QUERY"), None)
    if top is None:
        return {}
    rtable = top.get("rtable") or []
    refs: dict[str, tuple[int, int]] = {}
    for entry in top.get("targetList") or ():
        expr = _strip(entry.get("expr")) if isinstance(entry, dict) else None
        if isinstance(expr, dict) and expr.get("_node") == "VAR" and expr.get("varlevelsup") == "0" \
                and entry.get("resjunk") != "true":
            refs[entry["resname"]] = (int(expr["varno"]), int(expr["varattno"]))
    root = refs.get("id")
    if root is None:
        return {}
    pairs = _equal_pairs(top, equals)
    out: dict[str, tuple[int, tuple[int, int], set[tuple[int, int]]]] = {}
    for column, (rti, att) in refs.items():
        rte = rtable[rti - 1] if 0 < rti <= len(rtable) else None
        if not isinstance(rte, dict) or rte.get("rtekind") != "0" or rte.get("relkind") not in ("r", "p"):
            continue
        linked = {(this[1], other[1]) for (this, other) in pairs if this[0] == rti and other[0] == root[0]}
        out[column] = (int(rte["relid"]), (rti, att), linked if rti != root[0] else set())
    return out


def unjoined_tables(tree: Any, root_rtindex: int, equals: set[int], joinable: dict[int, set[int]]) -> set[int]:
    """Oids of tables an RTE of which is not restricted by an equality join on a key or FK column.

    The view's own root row (the top query's RTE its id comes from) is exempt:
    it is the row itself. Conservative: any doubt makes the table coarse.
    """
    out: set[int] = set()
    queries = _queries(tree)
    top = queries[0] if queries else None
    for query in queries:
        joined = _joined_columns(query, equals)
        for index, rte in enumerate(query.get("rtable") or [], start=1):
            if not isinstance(rte, dict) or rte.get("rtekind") != "0" or rte.get("relkind") not in ("r", "p"):
                continue
            if query is top and index == root_rtindex:
                continue
            relid = int(rte["relid"])
            if not any((index, att) in joined for att in joinable.get(relid, ())):
                out.add(relid)
    return out


# --- catalog queries ------------------------------------------------------------------

_RELATION = """
SELECT jsonb_build_object(
    'oid', c.oid::bigint,
    'qualified', n.nspname || '.' || c.relname,
    'relkind', c.relkind::text,
    'options', coalesce(to_jsonb(c.reloptions), '[]'::jsonb),
    'columns', (SELECT coalesce(jsonb_object_agg(a.attname, format_type(a.atttypid, a.atttypmod)), '{}'::jsonb)
                FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

# Every relation the view's rule depends on, recursively through nested views
# and through functions whose dependencies PostgreSQL records (SQL-standard
# bodies: RETURN ... / BEGIN ATOMIC). PL/pgSQL and string-bodied SQL functions
# record none: what they read is invisible here (docs/ARCHITECTURE.md).
_READS = """
WITH RECURSIVE objs(classid, objid) AS (
    SELECT 'pg_class'::regclass::oid, $1::oid
    UNION
    SELECT d.refclassid, d.refobjid
    FROM objs o
    JOIN pg_depend d
      ON (o.classid = 'pg_proc'::regclass AND d.classid = 'pg_proc'::regclass AND d.objid = o.objid)
      OR (o.classid = 'pg_class'::regclass AND d.classid = 'pg_rewrite'::regclass
          AND d.objid IN (SELECT w.oid FROM pg_rewrite w WHERE w.ev_class = o.objid))
    WHERE d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass)
      AND NOT (d.refclassid = o.classid AND d.refobjid = o.objid)
)
SELECT coalesce(jsonb_agg(x ORDER BY x->>'qualified'), '[]'::jsonb) FROM (
    SELECT jsonb_build_object(
        'oid', c.oid::bigint,
        'qualified', n.nspname || '.' || c.relname,
        'relkind', c.relkind::text,
        'definition', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END) AS x
    FROM objs JOIN pg_class c ON objs.classid = 'pg_class'::regclass AND c.oid = objs.objid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    UNION ALL
    SELECT jsonb_build_object(
        'oid', p.oid::bigint,
        'qualified', p.oid::regprocedure::text,
        'relkind', 'function',
        'definition', pg_get_functiondef(p.oid))
    FROM objs JOIN pg_proc p ON objs.classid = 'pg_proc'::regclass AND p.oid = objs.objid
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind IN ('f', 'p')
) s
"""

_RULE = "SELECT ev_action::text FROM pg_rewrite WHERE ev_class = $1::oid AND rulename = '_RETURN'"

_COLUMN = "SELECT jsonb_build_array(n.nspname || '.' || c.relname, c.relkind::text, a.attname) " \
          "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace " \
          "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = $2 WHERE c.oid = $1::oid"

_TABLES = f"""
SELECT coalesce(jsonb_agg(jsonb_build_object(
    'qualified', n.nspname || '.' || c.relname,
    'oid', c.oid::bigint,
    'joinable', (SELECT coalesce(jsonb_agg(DISTINCT k.conkey[1]), '[]'::jsonb) FROM pg_constraint k
                 WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u', 'f') AND cardinality(k.conkey) = 1),
    'rls', c.relrowsecurity,
    'keys', (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, k.contype::text)), '[]'::jsonb)
             FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
             WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u') AND cardinality(k.conkey) = 1),
    'fks', (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, pn.nspname || '.' || p.relname, pa.attname)), '[]'::jsonb)
            FROM pg_constraint k
            JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
            JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
            JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = k.confkey[1]
            WHERE k.conrelid = c.oid AND k.contype = 'f' AND cardinality(k.conkey) = 1),
    'trigger_types', (SELECT coalesce(jsonb_agg(t.tgtype::int), '[]'::jsonb)
                      FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid
                      JOIN pg_namespace fn ON fn.oid = f.pronamespace
                      WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                        AND fn.nspname = '{KIT_SCHEMA}'),
    -- per INSERT/UPDATE/DELETE trigger of the kit: the filter columns it reports (arguments 2..n)
    'value_columns', (SELECT coalesce(jsonb_agg((
                          SELECT coalesce(jsonb_agg(a.attname), '[]'::jsonb)
                          FROM unnest((string_to_array(encode(t.tgargs, 'escape'), '\\000'))[2:]) AS arg
                          JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = nullif(arg, '')::int2
                               AND NOT a.attisdropped)), '[]'::jsonb)
                      FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid
                      JOIN pg_namespace fn ON fn.oid = f.pronamespace
                      WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                        AND fn.nspname = '{KIT_SCHEMA}' AND f.proname = 'on_change' AND (t.tgtype & 28) <> 0)))
    , '[]'::jsonb)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY ($1::bigint[]::oid[])
"""

_FUNCTION = """
SELECT jsonb_build_object(
    'ok', to_regprocedure($1 || '(jsonb)') IS NOT NULL
          -- jsonb, or a composite (FraiseQL's mutation_response: the server reads it as to_jsonb(row))
          AND (SELECT p.prorettype = 'jsonb'::regtype OR t.typtype = 'c'
               FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype WHERE p.oid = to_regprocedure($1 || '(jsonb)')),
    'found', (SELECT coalesce(jsonb_agg(p.oid::regprocedure::text || ' -> ' || format_type(p.prorettype, NULL)), '[]'::jsonb)
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE p.proname = split_part($1, '.', -1)
                AND (position('.' in $1) = 0 AND n.nspname = ANY (current_schemas(true))
                     OR n.nspname = split_part($1, '.', 1))))
"""

_KIT = f"SELECT jsonb_build_object('kit', to_regnamespace('{KIT_SCHEMA}') IS NOT NULL)"

_EQUALS = "SELECT coalesce(jsonb_agg(oid::bigint), '[]'::jsonb) FROM pg_operator WHERE oid = ANY ($1::bigint[]::oid[]) " \
          "AND oprname = '='"

# The kit's own view of what it tracks: the key column it names rows by. Its
# triggers look a foreign key's parent up by that key, whichever unique column
# the foreign key references (fraiseshm/db/sql/kit.sql, _items_sql).
# Kits that send f:<table>:<fk column>=<parent key> items have this function (fraiseshm/db/sql/kit.sql).
_HAS_FK_VALUES = f"SELECT to_regprocedure('{KIT_SCHEMA}.emits_fk_values()') IS NOT NULL"
_HAS_KIT_KEYS = f"SELECT to_regprocedure('{KIT_SCHEMA}.tracked_tables()') IS NOT NULL"
_KIT_KEYS = f"""
SELECT coalesce(jsonb_object_agg(table_name, key_column), '{{}}'::jsonb) FROM {KIT_SCHEMA}.tracked_tables()
"""


async def _one(fetch: Fetch, sql: str, *args: Any) -> Any:
    rows = await fetch(sql, args)
    return rows[0] if rows else None


async def _root_of(fetch: Fetch, oid: int, column: str = "id") -> tuple[tuple[str, str] | None, str]:
    """Follow the view's output column down through nested views to (table, column)."""
    seen: set[int] = set()
    while oid not in seen:
        seen.add(oid)
        text = await _one(fetch, _RULE, oid)
        if text is None:
            return None, f"relation {oid} has no view rule"
        origin = _target_origin(parse_node_tree(text), column)
        if origin is None or origin[0] == 0:
            return None, (f"its {column} column is an expression, not a column of a table "
                          "(write it as a plain column reference, e.g. t.id)")
        relname, relkind, column = await _one(fetch, _COLUMN, origin[0], origin[1])
        if relkind in ("r", "p"):
            return (relname, column), ""
        if relkind != "v":
            return None, f"its {column} column comes from {relname} (relkind {relkind}), not a table"
        oid = origin[0]
    return None, "its id column's origin loops"


async def _origins(fetch: Fetch, tree: Any, equals: set[int]) -> dict[str, Origin]:
    sources = column_sources(tree, equals)
    root = sources.get("id")
    names: dict[tuple[int, int], tuple[str, str]] = {}

    async def name_of(oid: int, att: int) -> tuple[str, str]:
        if (oid, att) not in names:
            relname, _kind, column = await _one(fetch, _COLUMN, oid, att)
            names[(oid, att)] = (relname, column)
        return names[(oid, att)]

    out: dict[str, Origin] = {}
    for column, (oid, (rti, att), linked) in sources.items():
        table, source_column = await name_of(oid, att)
        links = []
        for this_att, root_att in sorted(linked):
            assert root is not None
            links.append(((await name_of(root[0], root_att))[1], (await name_of(oid, this_att))[1]))
        out[column] = Origin(table, source_column, same_row=root is not None and rti == root[1][0],
                             links=tuple(links))
    return out


def _fold(definitions: Any, name: str, reads: list[dict[str, Any]] | None) -> None:
    """One served view's part of the definitions hash (its reads' SQL, or its absence)."""
    if reads is None:
        definitions.update(f"{name}\0missing\0".encode())
        return
    for r in reads:
        if r["definition"] is not None:
            definitions.update(f"{r['qualified']}\0{r['definition']}\0".encode())


async def view_definitions(fetch: Fetch, views: Sequence[str]) -> bytes:
    """Catalog.definitions alone, as load_catalog computes it: two queries per view (the periodic re-check)."""
    definitions = hashlib.blake2b(digest_size=16)
    for name in sorted(set(views)):
        rel = await _one(fetch, _RELATION, name)
        _fold(definitions, name, None if rel is None else await _one(fetch, _READS, rel["oid"]))
    return definitions.digest()


async def load_catalog(fetch: Fetch, views: Sequence[str], functions: Sequence[str]) -> Catalog:
    catalog = Catalog()
    catalog.kit_installed = bool((await _one(fetch, _KIT))["kit"])
    definitions = hashlib.blake2b(digest_size=16)
    table_oids: dict[int, str] = {}
    trees: dict[str, tuple[Any, int]] = {}  # view -> (its rule's query tree, the id's range-table index)
    for name in sorted(set(views)):
        rel = await _one(fetch, _RELATION, name)
        if rel is None:
            catalog.views[name] = None
            _fold(definitions, name, None)
            continue
        kind = {"v": "view", "m": "materialized view", "r": "table", "p": "table"}.get(rel["relkind"], rel["relkind"])
        reads = await _one(fetch, _READS, rel["oid"])
        _fold(definitions, name, reads)
        tables, materialized = [], []
        for r in reads:
            if r["relkind"] in ("r", "p"):
                tables.append(r["qualified"])
                table_oids[r["oid"]] = r["qualified"]
            elif r["relkind"] == "m":
                materialized.append(r["qualified"])
        if rel["relkind"] in ("r", "p"):
            root, problem = (rel["qualified"], "id"), ""
        elif rel["relkind"] == "v":
            root, problem = await _root_of(fetch, rel["oid"])
            tree = parse_node_tree(await _one(fetch, _RULE, rel["oid"]))
            trees[name] = (tree, _target_rtindex(tree, "id"))
        else:
            root, problem = None, f"it is a {kind}: no trigger follows its refresh"
        options = {str(o).partition("=")[0]: str(o).partition("=")[2] for o in rel["options"]}
        catalog.views[name] = View(
            name=name,
            qualified=rel["qualified"],
            kind=kind,
            columns=dict(rel["columns"]),
            root=root,
            root_problem=problem,
            reads=tuple(sorted(set(tables))),
            materialized=tuple(sorted(set(materialized))),
            security_invoker=options.get("security_invoker", "").lower() in ("true", "on", "1", "yes"),
        )
    kit_keys = (await _one(fetch, _KIT_KEYS)) if await _one(fetch, _HAS_KIT_KEYS) else None
    catalog.kit_keys_known = kit_keys is not None
    tables_json = await _one(fetch, _TABLES, list(table_oids))
    for t in tables_json:
        events = set()
        for tgtype in t["trigger_types"]:
            events |= {e for bit, e in ((_TRIGGER_INSERT, "INSERT"), (_TRIGGER_UPDATE, "UPDATE"),
                                        (_TRIGGER_DELETE, "DELETE"), (_TRIGGER_TRUNCATE, "TRUNCATE")) if tgtype & bit}
        catalog.tables[t["qualified"]] = Table(
            name=t["qualified"],
            keys=frozenset(col for col, _ in t["keys"]),
            primary_key=next((col for col, kind in t["keys"] if kind == "p"), None),
            foreign_keys=tuple(ForeignKey(c, p, pc) for c, p, pc in t["fks"]),
            row_security=bool(t["rls"]),
            tracked_events=frozenset(events),
            kit_key=(kit_keys or {}).get(t["qualified"]),
            value_columns=frozenset.intersection(*(frozenset(c) for c in t["value_columns"]))
            if len(t["value_columns"]) == 3 else frozenset(),
        )
    joinable = {int(t["oid"]): set(t["joinable"]) for t in tables_json}
    operators = sorted(set().union(*(_operators(tree) for tree, _ in trees.values())))
    equals = set(await _one(fetch, _EQUALS, operators)) if operators else set()
    for name, (tree, root_index) in trees.items():
        view = catalog.views[name]
        unjoined = unjoined_tables(tree, root_index, equals, joinable)
        if view is not None and unjoined:
            catalog.views[name] = dataclasses.replace(
                view, unjoined=tuple(sorted(table_oids[oid] for oid in unjoined if oid in table_oids)))
        view = catalog.views[name]
        if view is not None:
            catalog.views[name] = dataclasses.replace(view, origins=await _origins(fetch, tree, equals))
    catalog.kit_fk_values = catalog.kit_installed and bool(await _one(fetch, _HAS_FK_VALUES))
    for fn in sorted(set(functions)):
        found = await _one(fetch, _FUNCTION, fn)
        catalog.functions[fn] = Function(fn, bool(found["found"]), bool(found["ok"]), tuple(found["found"]))
    catalog.definitions = definitions.digest()
    return catalog
