"""Cache dependencies: which tags an entry depends on, derived from the database.

Tag vocabulary (the contract with the SQL kit's change triggers, which bump
them; fraiseshm/cascade/changes.py parses what they send). Tags name tables
and keys, never GraphQL types: two GraphQL types over one view share them.

- ``r:<table>:<key>``  a row, by the text of its key column. Bumped for the
  changed row (old and new image) and, through every single-column foreign
  key of the changed table, for the parent row it names (a new order bumps
  ``r:public.customers:3``).
- ``t:<table>``        any change to the table (every statement).
- ``w:<table>``        rows of the table changed that could not be listed
  (too many for a notification, TRUNCATE): always comes with ``t:``.
- ``query:<field>``    a root field, for a cascade's query invalidations.
- ``f:<table>:<fk column>=<parent key>``  a row of the table whose single-column
  foreign key names (old or new image) the parent row with that key, the key
  being the one ``r:<parent>:`` tags use (``f:public.tb_post:fk_author=<uuid>``).
- ``v:<table>:<column>=<value>``  a row of the table whose column (one named by
  ``fraiseshm.track(table, filters => ...)``) had that text, old or new image.
- ``l:<table>``        a row of the table changed whose old and new values are
  unknown (a cascade entry with no recorded change items): every list over
  the table, precise or not.

A list root field depends on its *membership*: ``t:<root table>``, unless its
filters are matched cheaply (fraiseshm/graphql/filters.py): then on the
``f:``/``v:`` tags of the values it asked for, and ``l:<root table>``. A filter or
ordering column read from another row than the view's root row also makes
the list depend on ``t:`` of that table (or, for a computed column, on the
whole read set).

An entry depends on, whatever the query selected:

- ``r:<root table of T's view>:<id>`` for every object of a @view type T
  anywhere in the full ``data`` documents the database returned, and for the
  id a single-object root field asked for (found or not);
- ``t:<root table>`` for a list root field (its membership);
- for every table of the root view's read set (pg_depend, recursively through
  views): ``w:<table>`` when the table is *followed precisely*, else
  ``t:<table>``.

A table is followed precisely when its changes provably reach a row tag the
entry records (``bind`` below says, per view, which rule applied):

1. it has a single-column foreign key to the key column of a table whose rows
   the entry records (the root table of a @view type reachable from the
   view's type in the SDL): the kit bumps that parent row;
2. it is the root table of such a type reached one-to-one only (the view's
   own row, ``Post.author``): the rows the entry holds are recorded;
3. it is the root table of a type reached through a list, and the list runs
   through a link table that rule 1 follows to this table and to another
   recorded table (a many-to-many);

unless the SDL declares it coarse (``@view(coarse: ["public.orders"])``),
which is the user's way to say "this view reads that table in a way the
foreign keys do not describe", or the view's SQL visibly does so: a read of
the table not joined with ``=`` on a key or foreign key column (a global
count, a join on a non-key column; fraiseshm/graphql/catalog.py
``unjoined_tables``).
Everything else is followed coarsely. What the rules cannot see (they read the
catalog, not the view's join conditions) is written down in
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from fraiseshm.errors import SchemaError
from fraiseshm.graphql.catalog import Catalog, View
from fraiseshm.graphql.filters import Column
from fraiseshm.graphql.schema import EntityType, ServedSchema


# The key types a root field can bind ($1::<type>) and check before asking PostgreSQL.
KEY_TYPES = ("smallint", "integer", "bigint", "text", "character varying", "uuid")


@dataclass(frozen=True, slots=True)
class Follow:
    table: str
    precise: bool
    why: str


@dataclass(frozen=True, slots=True)
class Binding:
    """A @view type bound to the database at start."""

    entity: str  # the GraphQL type
    view: str  # schema-qualified view
    table: str  # root table: the table the view's id column comes from
    key_column: str  # that column of the root table
    key_type: str  # format_type of the view's id column
    columns: dict[str, str]  # view column -> PostgreSQL type
    follows: tuple[Follow, ...]  # every table of the read set
    static: frozenset[str]  # w:/t: tags every entry built from this view depends on
    wide: frozenset[str]  # w: + t: of every table of the read set: the safe wider invalidation
    per_identity: bool = False  # security_invoker view over a table with row-level security: never shared
    filters: dict[str, Column] = field(default_factory=dict)  # GraphQL name -> filterable column
    # view column -> tags a list filtered or sorted by it depends on besides its membership
    column_tags: dict[str, frozenset[str]] = field(default_factory=dict)

    def report(self) -> str:
        precise = [f"{f.table} ({f.why})" for f in self.follows if f.precise]
        coarse = [f"{f.table} ({f.why})" for f in self.follows if not f.precise]
        by_value = [f"{c.name} ({c.tag})" for c in self.filters.values() if c.tag]
        return (f"{self.entity} over {self.view} (root {self.table}.{self.key_column} {self.key_type}): "
                f"precise: {'; '.join(precise) or '-'}; coarse: {'; '.join(coarse) or '-'}; "
                f"lists invalidated by filter value: {', '.join(by_value) or '-'}")


def _reachable(served: ServedSchema, start: str) -> dict[str, bool]:
    """@view types reachable from start through the SDL -> reached through a list anywhere."""
    listed: dict[str, bool] = {}
    seen: set[tuple[str, bool]] = set()
    stack = [(start, False)]
    while stack:
        name, via_list = stack.pop()
        if name in served.entities:
            listed[name] = listed.get(name, False) or via_list
        if (name, via_list) in seen:
            continue
        seen.add((name, via_list))
        for _key, child, is_list in served.walk.get(name, ()):
            stack.append((child, is_list))
    listed[start] = listed.get(start, False)
    return listed


def bind(served: ServedSchema, catalog: Catalog) -> list[str]:
    """Bind every @view type to its view's catalog facts; fold the views' SQL into the version.

    Assumes fraiseshm/graphql/check.py found no problem (raises SchemaError on
    what it would have reported). Returns one report line per type.
    """
    roots: dict[str, tuple[str, str]] = {}
    for name, entity in served.entities.items():
        view = catalog.views.get(entity.view)
        if view is None or view.root is None:
            raise SchemaError(f"{served.where(entity.line)}: type {name}: view {entity.view} has no root table "
                              "(run `fraiseshm schema check`)")
        roots[name] = view.root
    key_of: dict[str, str] = {table: column for table, column in roots.values()}

    bindings: dict[str, Binding] = {}
    for name, entity in served.entities.items():
        view = catalog.views[entity.view]
        assert view is not None
        table, key_column = roots[name]
        listed = _reachable(served, name)
        recorded = {roots[t][0] for t in listed}
        one_to_one = {roots[t][0] for t, via_list in listed.items() if not via_list} | {table}
        owner = {roots[t][0]: t for t in listed}

        def matching(tname: str) -> list[tuple[str, str, str]]:
            """FKs whose parent tag the kit emits under the key the entry records."""
            info = catalog.tables.get(tname)
            out = []
            for fk in info.foreign_keys if info else ():
                if fk.parent not in recorded:
                    continue
                parent = catalog.tables.get(fk.parent)
                # The kit looks the parent's key up when the FK references another unique column.
                named_by = parent.kit_key if catalog.kit_keys_known and parent is not None else fk.parent_column
                if named_by == key_of.get(fk.parent):
                    out.append((fk.column, fk.parent, fk.parent_column))
            return out

        follows: list[Follow] = []
        by_fk = {t: matching(t) for t in view.reads}
        for t in view.reads:
            fks = by_fk[t]
            links = [u for u, u_fks in by_fk.items()
                     if any(p == t for _c, p, _pc in u_fks) and any(p != t for _c, p, _pc in u_fks)]
            if t in entity.coarse:
                follows.append(Follow(t, False, "declared coarse in the SDL"))
            elif t in view.unjoined:
                follows.append(Follow(t, False, "the view's SQL reads it without an equality join on a key or "
                                                "foreign key column (an aggregate over the table?)"))
            elif fks:
                c, p, pc = fks[0]
                follows.append(Follow(t, True, f"foreign key {c} -> {p}.{pc}: a change bumps r:{p}:<{key_of[p]}>"))
            elif t in one_to_one:
                follows.append(Follow(t, True, f"root table of {owner.get(t, name)}, whose rows the entry records"))
            elif t in recorded and links:
                follows.append(Follow(t, True, f"root table of {owner[t]}, listed through link table {links[0]}"))
            elif t in recorded:
                follows.append(Follow(t, False, f"root table of {owner[t]}, listed without a foreign key to the key "
                                                "of a recorded row (new rows would not reach the entry)"))
            else:
                follows.append(Follow(t, False, "no foreign key to the key of a row the entry records"))
        unknown = set(entity.coarse) - set(view.reads)
        if unknown:
            raise SchemaError(f"{served.where(entity.line)}: type {name}: @view coarse names "
                              f"{sorted(unknown)}, not in the read set of {view.qualified} {list(view.reads)}")
        wide = frozenset(tag + f.table for f in follows for tag in ("w:", "t:"))
        filters, column_tags = _column_facts(entity, view, table, catalog, wide)
        bindings[name] = Binding(
            entity=name,
            view=view.qualified,
            table=table,
            key_column=key_column,
            key_type=view.columns.get("id", ""),
            columns=view.columns,
            follows=tuple(follows),
            static=frozenset(("w:" if f.precise else "t:") + f.table for f in follows),
            wide=wide,
            per_identity=view.security_invoker and any(
                catalog.tables[t].row_security for t in view.reads if t in catalog.tables),
            filters=filters,
            column_tags=column_tags,
        )
    served.bindings = bindings
    served.definitions = catalog.definitions
    served.version = hashlib.blake2b(served.sdl_version + catalog.definitions, digest_size=16).digest()
    return [b.report() for b in bindings.values()]


def _column_facts(entity: EntityType, view: View, table: str, catalog: Catalog,
                  wide: frozenset[str]) -> tuple[dict[str, Column], dict[str, frozenset[str]]]:
    """Per filterable column: its type and value tag; per view column: the tags a list using it needs.

    A column has a value tag (``f:<root table>:<fk>``) when its value is provably the
    key the kit sends for the root row's foreign key fk: the root row's fk column
    itself (the parent being named by the column fk references), or the parent's
    naming key read from the parent row the view's top query joins with
    ``root.fk = parent.<referenced column>``. Proven from the catalog, never guessed.
    """
    root_fks = {fk.column: fk for fk in catalog.tables[table].foreign_keys} if table in catalog.tables else {}

    def kit_key(parent: str) -> str | None:
        info = catalog.tables.get(parent)
        return info.kit_key if info is not None and catalog.kit_keys_known else None

    def tag_of(column: str) -> str | None:
        origin = view.origins.get(column)
        if origin is None:
            return None
        reported = catalog.tables[table].value_columns if table in catalog.tables else frozenset()
        if origin.same_row and origin.table == table and origin.column in reported:
            return f"v:{table}:{origin.column}"
        if not catalog.kit_fk_values:
            return None
        if origin.same_row and origin.table == table:
            fk = root_fks.get(origin.column)
            if fk is not None and kit_key(fk.parent) == fk.parent_column:
                return f"f:{table}:{fk.column}"
            return None
        for root_column, parent_column in origin.links:
            fk = root_fks.get(root_column)
            if (fk is not None and fk.parent == origin.table and fk.parent_column == parent_column
                    and kit_key(origin.table) == origin.column):
                return f"f:{table}:{fk.column}"
        return None

    column_tags: dict[str, frozenset[str]] = {}
    for column in view.columns:
        origin = view.origins.get(column)
        if origin is None:
            column_tags[column] = wide  # computed: any table of the read set may change it
        elif origin.table != table or not origin.same_row:
            column_tags[column] = frozenset({"t:" + origin.table})
    filters: dict[str, Column] = {}
    for f in entity.filters:
        if f.column not in view.columns:
            continue
        tag = tag_of(f.column)
        origin = view.origins.get(f.column)
        # The parent's naming key: its value changes with that row (r:<parent>:<key>, old and new key).
        parent = origin.table if tag is not None and origin is not None and not origin.same_row else None
        filters[f.name] = Column(f.name, f.column, view.columns.get(f.column, "text"), tag, parent)
    return filters, column_tags


def list_fallback(entities: set[str], changes_direct: frozenset[str] | set[str] | None) -> set[str]:
    """``l:<table>`` for each cascade entity (``r:<table>:<id>``) with no recorded change item:
    its old and new values are unknown, so no value-filtered list can be spared."""
    recorded = changes_direct or set()
    out = set()
    for ref in entities:
        if ref not in recorded:
            body = ref[2:]
            dot = body.find(".")
            out.add("l:" + body[:body.find(":", dot + 1 if dot >= 0 else 0)])
    return out


def _key_text(value: Any) -> str | None:
    """An id as PostgreSQL's text output of the key column (what the kit puts in r: tags)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        return str(value)
    return None


class Dependencies:
    __slots__ = ("tags", "_ttl", "_default_ttl", "private", "_served")

    def __init__(self, default_ttl: float, served: ServedSchema | None = None) -> None:
        self.tags: set[str] = set()
        self._default_ttl = default_ttl
        self._ttl: float | None = None
        self.private = False  # the result holds a type marked @cache(private: true)
        self._served = served

    @property
    def ttl(self) -> float:
        """Seconds: the smallest TTL of the types in the result (a type's @cache(ttl)
        or else the configured default)."""
        return self._default_ttl if self._ttl is None else self._ttl

    def root(self, field: str) -> None:
        self.tags.add("query:" + field)

    def _policy(self, entity: EntityType) -> None:
        ttl = self._default_ttl if entity.ttl is None else entity.ttl
        if self._ttl is None or ttl < self._ttl:
            self._ttl = ttl
        if entity.private:
            self.private = True

    def rows(self, entity: EntityType, values: list[Any], *, is_list: bool, asked: str | None = None,
             membership: set[str] | None = None, extra: frozenset[str] | set[str] = frozenset()) -> None:
        """A root field's result: its view's read set, its membership or asked id, every object in `data`.

        membership: the value tags of a list's filters (fraiseshm/graphql/filters.py); None: the
        table-wide tag. extra: tags of the filter and sort columns read from other rows."""
        served = self._served
        assert served is not None, "Dependencies without a bound schema"
        binding = served.bindings[entity.name]
        self.tags |= binding.static
        self._policy(entity)
        if binding.per_identity:
            self.private = True  # its rows differ per identity (RLS): never stored under a shared scope
        if is_list:
            if membership is None:
                self.tags.add("t:" + binding.table)
            else:
                self.tags |= membership
                self.tags.add("l:" + binding.table)
            self.tags |= extra
        if asked is not None:
            self.tags.add(f"r:{binding.table}:{asked}")
        for value in values:
            self._walk(entity.name, value)

    def _walk(self, type_name: str, value: Any) -> None:
        served = self._served
        assert served is not None
        if isinstance(value, list):
            for item in value:
                self._walk(type_name, item)
            return
        if not isinstance(value, dict):
            return
        entity = served.entities.get(type_name)
        if entity is not None:
            key = _key_text(value.get("id"))
            binding = served.bindings[type_name]
            if key is not None:
                self.tags.add(f"r:{binding.table}:{key}")
            self._policy(entity)
            if binding.per_identity:
                self.private = True
        for data_key, child, _is_list in served.walk.get(type_name, ()):
            nested = value.get(data_key)
            if nested is not None:
                self._walk(child, nested)
