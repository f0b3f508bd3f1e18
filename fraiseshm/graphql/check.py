"""The start-up check: the SDL against the database, before the arena exists.

Run by the gunicorn master before workers fork (fraiseshm/master.py) and by
``fraiseshm schema check``. Every problem names the SDL line and what is
missing; all problems are gathered into ONE ``SchemaCheckFailed``, so a broken
set-up stops the start with one message instead of one traceback per worker
or a raw PostgreSQL error per request.

Checked: every @view names an existing view (or table) with an ``id`` column
of a servable key type matching the root field's argument and a ``jsonb``
``data`` column; filter and orderBy columns exist; the root table (where the
id comes from) is determinable and the id is a single-column key of it; every
table the view reads carries the kit's change triggers (a table without them
is named: its writes could not invalidate); every @function exists as
``fn(jsonb)`` returning jsonb or a composite. Warnings (logged, not fatal): a view that is not
``security_invoker`` over a table with row-level security.

On success the schema is bound (fraiseshm/graphql/deps.py ``bind``): key
types, read sets, precise/coarse tables, and the views' SQL in the version.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from fraiseshm.db.pool import Database
from fraiseshm.errors import DatabaseUnavailable, SchemaCheckFailed
from fraiseshm.graphql.catalog import Catalog, Fetch, load_catalog, view_definitions
from fraiseshm.graphql.deps import KEY_TYPES, bind
from fraiseshm.graphql.schema import ServedSchema, load_schema

log = logging.getLogger("fraiseshm.check")

_INT_KEYS = ("smallint", "integer", "bigint")
# GraphQL type of a single-object field's id argument -> key types it can carry
_ARG_KEYS = {
    "ID": KEY_TYPES,
    "Int": _INT_KEYS,
    "String": ("text", "character varying", "uuid"),
}


def _base_type(pg_type: str) -> str:
    return pg_type.split("(")[0]


@dataclass(slots=True)
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)  # per type: tables followed precisely / coarsely, and why
    catalog: Catalog | None = None

    def message(self, served: ServedSchema) -> str:
        head = f"schema check of {served.source} failed ({len(self.problems)} problem{'s' * (len(self.problems) > 1)}):"
        return "\n  ".join([head, *self.problems])


def examine(served: ServedSchema, catalog: Catalog) -> CheckResult:
    """Pure: the problems and warnings of served against catalog (binds nothing)."""
    result = CheckResult()
    problem = result.problems.append
    root_keys: dict[str, tuple[str, str]] = {}  # table -> (key column, the type that set it)
    untracked: dict[str, list[tuple[str, int]]] = {}
    for name, entity in served.entities.items():
        at = f"{served.where(entity.line)}: type {name} @view(name: \"{entity.view}\")"
        view = catalog.views.get(entity.view)
        if view is None:
            problem(f"{at}: no view or table {entity.view} in the database (search_path)")
            continue
        columns = view.columns
        if "id" not in columns:
            problem(f"{at}: {view.qualified} has no column id")
        if "data" not in columns:
            problem(f"{at}: {view.qualified} has no column data (the object as jsonb)")
        elif columns["data"] != "jsonb":
            problem(f"{at}: {view.qualified}.data is {columns['data']}, not jsonb")
        for column in [part.split()[0] for part in entity.order_by.split(",")]:
            if column not in columns:
                problem(f"{at}: orderBy column {column} is not a column of {view.qualified}")
        arguments = {arg for q in served.queries.values() if q.entity is entity for arg, _ in q.filters}  # below
        for what, names in (("filters", [(f.name, f.column) for f in entity.filters]),
                            ("sortable", [(c.name, c.column) for c in entity.sortable])):
            for gname, column in names:
                if column not in columns and gname != "id" and gname not in arguments:
                    problem(f"{at}: {what}: {gname} needs a column {column} in {view.qualified} "
                            f"(it has {', '.join(sorted(c for c in columns if c != 'data'))})")
        key_type = _base_type(columns.get("id", ""))
        if "id" in columns and key_type not in KEY_TYPES:
            problem(f"{at}: {view.qualified}.id is {columns['id']}; a key must be one of "
                    f"{', '.join(KEY_TYPES)} (serve a key column of the table as id)")
        if view.materialized:
            problem(f"{at}: {view.qualified} reads materialized view(s) {', '.join(view.materialized)}: "
                    "no trigger follows REFRESH, so its rows could be stale")
        if "id" in columns and key_type not in KEY_TYPES:
            pass  # one problem per cause: the key type already said it
        elif view.root is None:
            if "id" in columns:
                problem(f"{at}: cannot tell which table {view.qualified}'s rows come from: {view.root_problem}")
        else:
            table, column = view.root
            info = catalog.tables.get(table)
            if info is not None and column not in info.keys:
                problem(f"{at}: {view.qualified}.id comes from {table}.{column}, which is not a single-column "
                        "PRIMARY KEY or UNIQUE key: its rows cannot be tagged")
            if info is not None and catalog.kit_keys_known and info.tracked and info.kit_key != column:
                problem(f"{at}: {view.qualified}.id comes from {table}.{column}, but the kit names {table}'s rows "
                        f"by {info.kit_key or 'no key'}: SELECT fraiseshm.track('{table}', key => '{column}')")
            earlier = root_keys.setdefault(table, (column, name))
            if earlier[0] != column:
                problem(f"{at}: its id is {table}.{column}, but type {earlier[1]}'s id over the same table is "
                        f"{table}.{earlier[0]}: row tags need one key per table")
        unknown = set(entity.coarse) - set(view.reads)
        if unknown:
            problem(f"{at}: coarse names {', '.join(sorted(unknown))}, not read by {view.qualified} "
                    f"(it reads {', '.join(view.reads) or 'no table'})")
        for table in view.reads:
            info = catalog.tables.get(table)
            if info is None or not info.tracked:
                untracked.setdefault(table, []).append((name, entity.line))
            elif info.row_security and not view.security_invoker:
                result.warnings.append(
                    f"{at}: {view.qualified} is not security_invoker and reads {table}, which has row-level "
                    "security: the view runs with its owner's rights and bypasses the table's policies")
            elif info.row_security and not entity.private:
                result.warnings.append(
                    f"{at}: {view.qualified} is security_invoker and reads {table}, which has row-level security: "
                    "its rows differ per identity, so results holding it are never stored under a shared scope; "
                    "mark the type @cache(private: true) so that they are cached per identity")
    for table, users in sorted(untracked.items()):
        how = ("install the kit first: fraiseshm db install, then " if not catalog.kit_installed else "")
        readers = ", ".join(f"{name} (line {line})" for name, line in users)
        problem(f"{served.where(users[0][1])}: table {table} carries no fraiseshm change triggers (INSERT, UPDATE "
                f"and DELETE), so its writes cannot invalidate the cache; read by type {readers}. Fix: {how}"
                f"SELECT fraiseshm.track('{table}')")

    for name, root in served.queries.items():
        if root.kind in ("connection", "count"):
            continue  # generated beside a list field, with its arguments: checked there
        if root.is_list:
            view = catalog.views.get(root.entity.view)
            for arg, column in root.filters:
                if view is not None and column not in view.columns:
                    problem(f"{served.where(root.line)}: Query.{name}, argument {arg}: filter column {column} is not a "
                            f"column of {view.qualified}")
            continue
        view = catalog.views.get(root.entity.view)
        if view is None or "id" not in view.columns:
            continue
        key_type = _base_type(view.columns["id"])
        allowed = _ARG_KEYS.get(root.id_type, ())
        if key_type in KEY_TYPES and key_type not in allowed:
            problem(f"{served.where(root.line)}: Query.{name}(id: {root.id_type}) but {view.qualified}.id is "
                    f"{view.columns['id']}: declare id as "
                    f"{'ID or Int' if key_type in _INT_KEYS else 'ID or String'}")

    for name, mutation in served.mutations.items():
        fn = catalog.functions.get(mutation.function)
        at = f"{served.where(mutation.line)}: Mutation.{name} @function(name: \"{mutation.function}\")"
        if fn is None or not fn.exists:
            problem(f"{at}: no function {mutation.function} in the database (search_path)")
        elif not fn.signature_ok:
            problem(f"{at}: needs {mutation.function}(jsonb) returning jsonb or a composite type "
                    "(FraiseQL's mutation_response); the database has "
                    f"{', '.join(fn.found)}")
    return result


async def check_schema(served: ServedSchema, fetch: Fetch) -> CheckResult:
    """Read the catalog, examine, and bind on success; SchemaCheckFailed with one message otherwise."""
    catalog = await load_catalog(
        fetch,
        [e.view for e in served.entities.values()],
        [m.function for m in served.mutations.values()],
    )
    result = examine(served, catalog)
    if result.problems:
        raise SchemaCheckFailed(result.message(served))
    result.report = bind(served, catalog)
    result.catalog = catalog
    return result


# The master's catalog, inherited by the workers it forks: (SDL path, DSN) -> Catalog.
_inherited: dict[tuple[str, str], Catalog] = {}


_BYPASSES_RLS = ("SELECT jsonb_build_array(r.rolname::text, r.rolsuper OR r.rolbypassrls) FROM pg_roles r "
                 "WHERE r.rolname = coalesce(nullif($1, ''), current_user)")


async def _warn_if_requests_bypass_rls(served: ServedSchema, fetch: Fetch, request_role: str,
                                       result: CheckResult) -> None:
    """Private data is only as private as the role requests run as: a superuser or a
    BYPASSRLS role sees every row whatever the policies say (DESIGN.md, Isolation)."""
    private = sorted(name for name, e in served.entities.items()
                     if e.private or (name in served.bindings and served.bindings[name].per_identity))
    if not private:
        return
    rows = await fetch(_BYPASSES_RLS, (request_role,))
    if rows and rows[0][1]:
        result.warnings.append(
            f"requests run as role {rows[0][0]}, which bypasses row-level security (superuser or BYPASSRLS): "
            f"the policies behind the private types {', '.join(private)} do not apply, every identity sees "
            "every row; set FRAISESHM_DB_ROLE to a plain role")


async def load_and_check(sdl: str, dsn: str, *, connect_timeout: float = 5.0,
                         request_role: str = "", transaction_pooler: bool = False) -> tuple[ServedSchema, CheckResult]:
    """Load the SDL file, check it against the database at dsn, bind it; remember the catalog."""
    served = load_schema(sdl)
    db = Database(dsn, min_size=1, max_size=1, connect_timeout=connect_timeout, transaction_pooler=transaction_pooler)
    try:
        result = await check_schema(served, db.fetch_column)
        await _warn_if_requests_bypass_rls(served, db.fetch_column, request_role, result)
    except DatabaseUnavailable as exc:
        raise SchemaCheckFailed(f"cannot check {sdl} against the database: {exc}") from None
    finally:
        await db.close()
    assert result.catalog is not None
    _inherited[(sdl, dsn)] = result.catalog
    return served, result


async def recheck(served: ServedSchema, fetch: Fetch) -> bool:
    """Re-read the catalog; re-bind served in place if the views' SQL changed. True if it did.

    A view replaced while the server runs (CREATE OR REPLACE VIEW) changes the
    schema version, so entries built by the old definition are never served
    again; its new read set and key type take effect at once. A change that
    breaks the check is logged (the old bindings stay; restart to see it fail).
    """
    views = [e.view for e in served.entities.values()]
    if await view_definitions(fetch, views) == served.definitions:
        return False
    catalog = await load_catalog(fetch, views, [m.function for m in served.mutations.values()])
    result = examine(served, catalog)
    if result.problems:
        log.error("the served views changed while running and no longer pass the check; serving with the old "
                  "bindings under a new schema version until a restart:\n  %s", result.message(served))
        served.definitions = catalog.definitions
        served.version = hashlib.blake2b(served.sdl_version + b"broken" + catalog.definitions, digest_size=16).digest()
        return True
    result.report = bind(served, catalog)
    log.warning("the served views' SQL changed while running: schema re-bound, new schema version")
    log_result(result)
    return True


def bound_schema(sdl: str, dsn: str) -> ServedSchema | None:
    """In a worker: the SDL bound with the catalog the master checked (None if this process never checked)."""
    catalog = _inherited.get((sdl, dsn))
    if catalog is None:
        return None
    served = load_schema(sdl)
    bind(served, catalog)
    return served


def log_result(result: CheckResult) -> None:
    for warning in result.warnings:
        log.warning("%s", warning)
    for line in result.report:
        log.info("dependencies: %s", line)
