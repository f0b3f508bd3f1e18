"""A `where` argument -> parameterised SQL, and the tags of the lists it selects.

Identifiers come from the bound schema only (view columns read from the
catalog, quoted); every value is a ``$n`` parameter sent as text and cast to
the column's PostgreSQL type after ``bind_text`` checked it, so no byte of the
input ever reaches the SQL text. Bounds: nesting of ``_and``/``_or``/``_not``,
values per ``in``/``nin`` list, conditions per request (Settings
``filter_max_depth``, ``filter_max_in``, ``filter_max_conditions``).

Precise list invalidation (docs/ARCHITECTURE.md, "Dependencies"): besides its
SQL a predicate yields the *membership tags* of the list, when it can: an
``eq``/``in`` on a column whose changes the kit reports by value
(``v:``/``f:`` tags, fraiseshm/graphql/deps.py ``ColumnFacts``) depends on
the tag of each value; a conjunction on the cheapest of its precise
conjuncts; a disjunction on the union of its branches if all are precise.
Anything else (ranges, like, neq, isNull, _not) has no membership tags: the
list depends on the table-wide tag instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError

# Value tags name the text of a value; the kit skips longer ones (fraiseshm/db/sql/kit.sql _value_items).
MAX_TAG_VALUE = 200
# Types whose text form is canonical (equal values <=> equal text): value tags are exact.
CANONICAL_TYPES = frozenset(("smallint", "integer", "bigint", "text", "character varying", "uuid", "boolean"))
TEXT_TYPES = frozenset(("text", "character varying", "character", "citext", "name"))
_COMPARISON = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True, slots=True)
class FilterLimits:
    max_depth: int = 5  # nesting of _and/_or/_not
    max_in: int = 100  # values in one in/nin list
    max_conditions: int = 50  # operators in one request's where


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(slots=True)
class Params:
    """The statement's parameters: values (text or lists of text) appended in order."""

    values: list[Any] = field(default_factory=list)

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


@dataclass(frozen=True, slots=True)
class Column:
    """A filterable view column, as the bound schema knows it."""

    name: str  # GraphQL name
    column: str  # view column
    pg_type: str
    tag: str | None  # "v:<table>:<column>" / "f:<table>:<fk>": value tags exist for it; None: table-wide only
    # read from a parent row joined through the root row's foreign key: that row's table, whose row
    # tags (r:<parent>:<value>) an eq/in depends on and whose t: any other operator depends on
    parent: str | None = None


Bind = Callable[[Any, str, str, str], str]  # bind_text(value, pg_type, field, arg)


@dataclass(slots=True)
class Compiled:
    sql: str
    tags: set[str] | None  # membership tags; None: not matched cheaply (the table-wide tag)


class WhereCompiler:
    def __init__(self, field: str, columns: Mapping[str, Column], params: Params, bind: Bind,
                 limits: FilterLimits) -> None:
        self.field = field
        self.columns = columns
        self.params = params
        self.bind = bind
        self.limits = limits
        self.conditions = 0
        self.extra: set[str] = set()  # tags of parent rows the predicate reads (Column.parent)

    def error(self, message: str, code: str = "BAD_FILTER") -> GraphQLError:
        return GraphQLError(f"{self.field}: where: {message}", extensions={"code": code})

    def compile(self, where: Any, depth: int = 1) -> Compiled:
        if not isinstance(where, dict):
            raise self.error("expected an input object")
        if depth > self.limits.max_depth:
            raise self.error(f"nests deeper than {self.limits.max_depth} levels of _and/_or/_not "
                             "(FRAISESHM_FILTER_MAX_DEPTH)", "LIMIT_EXCEEDED")
        parts: list[str] = []
        precise: list[set[str]] = []
        for key, value in where.items():
            if value is None:
                continue  # an absent or null field does not restrict
            if key == "_and":
                for sub in self._list(value, key):
                    c = self.compile(sub, depth + 1)
                    parts.append(c.sql)
                    if c.tags is not None:
                        precise.append(c.tags)
            elif key == "_or":
                subs = [self.compile(sub, depth + 1) for sub in self._list(value, key)]
                parts.append("(" + " OR ".join(c.sql for c in subs) + ")" if subs else "FALSE")
                if all(c.tags is not None for c in subs):
                    precise.append(set().union(*(c.tags or set() for c in subs)))
            elif key == "_not":
                parts.append(f"NOT ({self.compile(value, depth + 1).sql})")
            else:
                column = self.columns.get(key)
                if column is None:
                    raise self.error(f"{key!r} is not a filterable column")
                c = self._operators(column, value)
                parts.append(c.sql)
                if c.tags is not None:
                    precise.append(c.tags)
        sql = "(" + " AND ".join(parts) + ")" if parts else "TRUE"
        return Compiled(sql, min(precise, key=len) if precise else None)

    def _list(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(f"{key} takes a list")
        return value

    def _count(self) -> None:
        self.conditions += 1
        if self.conditions > self.limits.max_conditions:
            raise self.error(f"more than {self.limits.max_conditions} conditions (FRAISESHM_FILTER_MAX_CONDITIONS)",
                             "LIMIT_EXCEEDED")

    def _operators(self, column: Column, ops: Any) -> Compiled:
        if not isinstance(ops, dict):
            raise self.error(f"{column.name}: expected an operator object")
        ident = quote_ident(column.column)
        cast = f"text::{column.pg_type}"
        parts: list[str] = []
        precise: list[set[str]] = []
        for op, value in ops.items():
            self._count()
            arg = f"{column.name}.{op}"
            if column.parent is not None and op not in ("eq", "in"):
                self.extra.add("t:" + column.parent)
            if op == "isNull":
                if value is None:
                    continue
                parts.append(f"{ident} IS {'' if value else 'NOT '}NULL")
                continue
            if value is None:
                raise self.error(f"{arg}: null is not a value (use isNull)")
            if op in _COMPARISON:
                text = self.bind(value, column.pg_type, self.field, arg)
                parts.append(f"{ident} {_COMPARISON[op]} {self.params.add(text, cast)}")
                if op == "eq":
                    self._parent_rows(column, [text])
                    tags = self._value_tags(column, [text])
                    if tags is not None:
                        precise.append(tags)
            elif op in ("in", "nin"):
                values = self._list(value, arg)
                if len(values) > self.limits.max_in:
                    raise self.error(f"{arg} has {len(values)} values, more than {self.limits.max_in} "
                                     "(FRAISESHM_FILTER_MAX_IN)", "LIMIT_EXCEEDED")
                texts = [self.bind(v, column.pg_type, self.field, arg) for v in values]
                ref = self.params.add(texts, f"text[]::{column.pg_type}[]")
                parts.append(f"{ident} = ANY ({ref})" if op == "in" else f"NOT ({ident} = ANY ({ref}))")
                if op == "in":
                    self._parent_rows(column, texts)
                    tags = self._value_tags(column, texts)
                    if tags is not None:
                        precise.append(tags)
            elif op in ("like", "ilike"):
                if column.pg_type not in TEXT_TYPES:
                    raise self.error(f"{arg}: {op} applies to text columns; {column.name} is {column.pg_type}")
                if not isinstance(value, str):
                    raise self.error(f"{arg}: expected a string pattern")
                parts.append(f"{ident} {op.upper()} {self.params.add(value, 'text')}")
            else:
                raise self.error(f"{arg}: unknown operator {op!r}")
        sql = "(" + " AND ".join(parts) + ")" if parts else "TRUE"
        return Compiled(sql, min(precise, key=len) if precise else None)

    def _parent_rows(self, column: Column, texts: list[str]) -> None:
        if column.parent is not None:
            self.extra.update(f"r:{column.parent}:{t}" for t in texts)

    @staticmethod
    def _value_tags(column: Column, texts: list[str]) -> set[str] | None:
        if column.tag is None or column.pg_type not in CANONICAL_TYPES:
            return None
        if any(len(t.encode()) > MAX_TAG_VALUE for t in texts):
            return None  # the kit names no value this long: only the table-wide tag reaches it
        return {f"{column.tag}={t}" for t in texts}
