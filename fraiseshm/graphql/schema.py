"""SDL with directives -> an executable graphql-core schema mapped to PostgreSQL.

Conventions (see fraiseshm/graphql/cascade.graphql for the directives):

- ``type T @view(name: "v_t", orderBy: "created_at, id", coarse: [...])``: T's
  rows live in a view with columns ``id`` (any of smallint, integer, bigint,
  text, varchar, uuid: read from the catalog at start), ``data jsonb`` (nested
  objects already composed, so one root field is one SQL query) and optional
  filter columns. ``coarse`` names tables of the view's read set to follow
  with their table tag only (fraiseshm/graphql/deps.py).
- A root query field whose type is a @view type selects one row by ``id``; a
  root field returning a list of a @view type takes ``limit``/``offset`` and
  every other argument filters the view column ``snake_case(arg)``, bound
  with that column's PostgreSQL type.
- ``@function(name: "fn_x", touches: [...])`` on a mutation field calls
  ``fn_x(input jsonb)``, returning a graphql-cascade response as jsonb or
  FraiseQL's mutation_response (fraiseshm/cascade/spec.py reads both).
- ``cascadeInfo`` (graphql-cascade version discovery) is added to Query.
- ``@cache(ttl: seconds, private: bool)`` on a type sets its TTL and privacy.
- JSONB keys are snake_case; GraphQL fields are camelCase. Every field reads
  ``source[snake_case(field)]``.

The schema's version is a hash of the full SDL text and, once bound to the
database (fraiseshm/graphql/deps.py ``bind``), of the SQL definition of every
served view, recursively: it is part of every cache key, so neither a changed
SDL nor a migrated view ever serves entries of the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphql import (
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    build_ast_schema,
    build_schema,
    get_named_type,
    parse,
)
from graphql.execution.values import get_directive_values
from graphql.language import Node as AstNode

from fraiseshm.cascade.spec import DEPRECATED_FEATURES, SPEC_VERSION, SUPPORTED_VERSIONS
from fraiseshm.errors import SchemaError
from fraiseshm.graphql.surface import (
    COMMON_SDL,
    CONNECTION_SUFFIX,
    COUNT_SUFFIX,
    OPERATORS,
    FilterColumn,
    SortColumn,
    extend_query,
    type_sdl,
)

if TYPE_CHECKING:
    from fraiseshm.graphql.deps import Binding

# graphql-cascade version discovery: a root field the server adds to the user's Query.
VERSION_DISCOVERY = "\nextend type Query {\n  cascadeInfo: CascadeInfo!\n}\n"
# The built-in types a mutation payload's cascade and errors resolve from spec-shaped dicts.
CASCADE_TYPES = frozenset({"CascadeUpdates", "CascadeMetadata", "TypeInvalidation", "UpdatedEntity", "DeletedEntity",
                           "QueryInvalidation", "CascadeError", "CascadeInfo"})

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    return _CAMEL_BOUNDARY.sub(r"_\1", name).lower()


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True, slots=True)
class EntityType:
    """A GraphQL object type backed by a view."""

    name: str
    view: str
    order_by: str
    ttl: float | None  # seconds; None = the configured default
    private: bool
    coarse: tuple[str, ...] = ()  # tables declared coarse (@view coarse)
    line: int = 0  # of the type in the user's SDL
    filters: tuple[FilterColumn, ...] = ()  # columns `where` may name (fraiseshm/graphql/surface.py)
    sortable: tuple[SortColumn, ...] = ()  # columns `orderBy` may name

    @property
    def order(self) -> tuple[tuple[str, bool], ...]:
        """@view(orderBy:) as (column, descending) pairs."""
        return tuple((words[0], len(words) > 1 and words[1].lower() == "desc")
                     for words in (part.split() for part in self.order_by.split(",")))


@dataclass(frozen=True, slots=True)
class RootQuery:
    """A root query field and the one SQL statement that serves it."""

    field: str
    entity: EntityType
    is_list: bool
    filters: tuple[tuple[str, str], ...]  # (graphql arg, view column)
    id_type: str = ""  # the GraphQL type of a single-object field's id argument ("ID", "Int", ...)
    line: int = 0
    kind: str = "one"  # one | list | connection | count (generated: fraiseshm/graphql/surface.py)


@dataclass(frozen=True, slots=True)
class RootMutation:
    field: str
    function: str
    touches: tuple[str, ...]  # types a failed cascade falls back to invalidating
    line: int = 0


@dataclass(slots=True)
class ServedSchema:
    schema: GraphQLSchema
    version: bytes  # 16-byte hash of the SDL (and, once bound, of the views' SQL): part of every cache key
    sdl_version: bytes = b""  # hash of the SDL alone
    source: str = "<sdl>"  # the SDL file, for messages
    first_line: int = 0  # lines of the built-in SDL before the user's
    entities: dict[str, EntityType] = field(default_factory=dict)
    queries: dict[str, RootQuery] = field(default_factory=dict)
    mutations: dict[str, RootMutation] = field(default_factory=dict)
    # object type -> ((data key, field's named object type), ...): how deps walk a `data` document
    walk: dict[str, tuple[tuple[str, str, bool], ...]] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)  # @view type -> its database facts
    definitions: bytes = b""  # hash of the views' SQL the bindings were read from

    @property
    def query_names(self) -> tuple[str, ...]:
        return tuple(self.queries)

    def line_of(self, node: AstNode | None) -> int:
        """The line in the user's SDL file of an AST node (0 if unknown)."""
        if node is None or node.loc is None:
            return 0
        return node.loc.source.body.count("\n", 0, node.loc.start) + 1 - self.first_line

    def where(self, line: int) -> str:
        return f"{self.source}:{line}" if line > 0 else self.source


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_ORDER_BY = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*(\s+(asc|desc))?(\s*,\s*[A-Za-z_][A-Za-z0-9_]*(\s+(asc|desc))?)*\s*$", re.I)


def _directive(schema: GraphQLSchema, name: str, node: Any) -> dict[str, Any] | None:
    directive = schema.get_directive(name)
    if directive is None or node is None:
        return None
    return get_directive_values(directive, node)


def _unwrap_list(gtype: Any) -> tuple[Any, bool]:
    if isinstance(gtype, GraphQLNonNull):
        gtype = gtype.of_type
    return get_named_type(gtype), isinstance(gtype, GraphQLList)


def builtin_sdl() -> str:
    return resources.files("fraiseshm.graphql").joinpath("cascade.graphql").read_text()


def load_schema(sdl_path: str | Path) -> ServedSchema:
    try:
        user_sdl = Path(sdl_path).read_text()
    except OSError as exc:
        raise SchemaError(f"cannot read schema {sdl_path}: {exc.strerror}") from None
    return build_served_schema(user_sdl, source=str(sdl_path))


def build_served_schema(user_sdl: str, source: str = "<sdl>") -> ServedSchema:
    builtin = builtin_sdl() + "\n"
    first_line = builtin.count("\n")
    full_sdl = builtin + user_sdl + VERSION_DISCOVERY
    try:
        schema = build_schema(full_sdl)
        generated = _generated_sdl(schema, source)
        if generated:
            # The same SDL plus the generated surface; line numbers stay those of the user's file.
            document = extend_query(parse(full_sdl), generated[1], source)
            extra = parse(generated[0], no_location=True).definitions
            schema = build_ast_schema(dataclasses.replace(document, definitions=(*document.definitions, *extra)))
            full_sdl += "\n" + generated[0] + "\n" + repr(sorted(generated[1].items()))
    except GraphQLError as exc:
        where = source
        if exc.locations:
            line = exc.locations[0].line - first_line
            where = f"{source}:{line}" if line > 0 else f"{source} (a name the built-in SDL defines)"
        raise SchemaError(f"{where}: {exc.message}") from None
    sdl_version = hashlib.blake2b(full_sdl.encode(), digest_size=16).digest()
    served = ServedSchema(schema=schema, version=sdl_version, sdl_version=sdl_version, source=source,
                          first_line=first_line)

    for gtype in schema.type_map.values():
        if not isinstance(gtype, GraphQLObjectType):
            continue
        view = _directive(schema, "view", gtype.ast_node)
        cache = _directive(schema, "cache", gtype.ast_node) or {}
        if view is None:
            continue
        at = served.where(served.line_of(gtype.ast_node))
        if not _IDENT.match(view["name"]):
            raise SchemaError(f"{at}: type {gtype.name}: @view name {view['name']!r} is not an identifier")
        if not _ORDER_BY.match(view["orderBy"]):
            raise SchemaError(f"{at}: type {gtype.name}: @view orderBy {view['orderBy']!r} is not a column list")
        if "id" not in gtype.fields:
            raise SchemaError(f"{at}: @view type {gtype.name} needs an id field")
        ttl = cache.get("ttl")
        served.entities[gtype.name] = EntityType(
            name=gtype.name,
            view=view["name"],
            order_by=view["orderBy"],
            ttl=float(ttl) if ttl is not None else None,
            private=bool(cache.get("private", False)),
            coarse=tuple(view.get("coarse") or ()),
            line=served.line_of(gtype.ast_node),
            filters=_declared_filters(schema, gtype, view, at),
            sortable=_declared_sortable(gtype, view, at),
        )

    query_type = schema.query_type
    if query_type is None:
        raise SchemaError(f"{source}: no Query type")
    for name, fdef in query_type.fields.items():
        if name == "cascadeInfo":
            fdef.resolve = _resolve_cascade_info
            continue
        at = served.where(served.line_of(fdef.ast_node))
        named, is_list = _unwrap_list(fdef.type)
        kind = "list" if is_list else "one"
        if isinstance(named, GraphQLObjectType) and name.endswith(CONNECTION_SUFFIX) \
                and named.name.endswith(CONNECTION_SUFFIX) and named.ast_node is not None and named.ast_node.loc is None:
            named, is_list, kind = served.schema.get_type(named.name[:-len(CONNECTION_SUFFIX)]), True, "connection"
        elif getattr(named, "name", "") == "Int" and name.endswith(COUNT_SUFFIX) and fdef.ast_node is not None \
                and fdef.ast_node.loc is None and "where" in fdef.args:
            where_type = get_named_type(fdef.args["where"].type).name
            named, is_list, kind = served.schema.get_type(where_type[:-len("WhereInput")]), True, "count"
        entity = served.entities.get(getattr(named, "name", ""))
        if entity is None:
            raise SchemaError(f"{at}: Query.{name} must return a @view type, not {named}")
        if not is_list and set(fdef.args) != {"id"}:
            raise SchemaError(f"{at}: Query.{name} returns one {entity.name}: its only argument must be id")
        filters = tuple(
            (arg, snake_case(arg)) for arg in fdef.args if arg not in _PAGING
        ) if is_list else ()
        id_type = "" if is_list else get_named_type(fdef.args["id"].type).name
        served.queries[name] = RootQuery(field=name, entity=entity, is_list=is_list, filters=filters,
                                         id_type=id_type, line=served.line_of(fdef.ast_node), kind=kind)

    mutation_type = schema.mutation_type
    for name, fdef in (mutation_type.fields.items() if mutation_type else ()):
        at = served.where(served.line_of(fdef.ast_node))
        fn = _directive(schema, "function", fdef.ast_node)
        if fn is None:
            raise SchemaError(f"{at}: Mutation.{name} needs @function(name: ...)")
        if not _IDENT.match(fn["name"]):
            raise SchemaError(f"{at}: Mutation.{name}: @function name {fn['name']!r} is not an identifier")
        if set(fdef.args) != {"input"}:
            raise SchemaError(f"{at}: Mutation.{name} must take exactly one argument named input")
        touches = fn.get("touches")
        if not touches:
            response, _ = _unwrap_list(fdef.type)
            data_field = getattr(response, "fields", {}).get("data")
            data_type = _unwrap_list(data_field.type)[0].name if data_field else None
            touches = [data_type] if data_type in served.entities else []
        unknown = [t for t in touches if t not in served.entities]
        if unknown:
            raise SchemaError(f"{at}: Mutation.{name}: touches unknown types {unknown}")
        served.mutations[name] = RootMutation(field=name, function=fn["name"], touches=tuple(touches),
                                              line=served.line_of(fdef.ast_node))

    served.walk = _walk_plan(schema)
    _attach_field_resolvers(schema)
    return served


_PAGING = ("limit", "offset", "where", "orderBy", "first", "after", "last", "before")


def _generated_sdl(schema: GraphQLSchema, source: str) -> tuple[str, dict[str, tuple[str, str]]] | None:
    """The SDL of the generated surface, and per list field its @view type and equality arguments."""
    query_type = schema.query_type
    if query_type is None:
        return None
    lists: dict[str, tuple[str, str]] = {}
    for name, fdef in query_type.fields.items():
        named, is_list = _unwrap_list(fdef.type)
        if not is_list or not isinstance(named, GraphQLObjectType) or _directive(schema, "view", named.ast_node) is None:
            continue
        equality = ", ".join(f"{arg}: {a.type}" for arg, a in fdef.args.items() if arg not in _PAGING)
        lists[name] = (named.name, equality)
    if not lists:
        return None
    parts = [COMMON_SDL]
    for type_name in sorted({t for t, _ in lists.values()}):
        gtype = schema.get_type(type_name)
        view = _directive(schema, "view", gtype.ast_node) or {}
        at = f"{source}: type {type_name}"
        parts.append(type_sdl(type_name, _declared_filters(schema, gtype, view, at),
                              _declared_sortable(gtype, view, at)))
    return "\n".join(parts), lists


def _equality_args(schema: GraphQLSchema, type_name: str) -> dict[str, str]:
    """Equality arguments of the list fields returning type_name: name -> scalar."""
    out: dict[str, str] = {}
    for fdef in (schema.query_type.fields.values() if schema.query_type else ()):
        named, is_list = _unwrap_list(fdef.type)
        if is_list and getattr(named, "name", "") == type_name:
            for arg, a in fdef.args.items():
                if arg not in _PAGING:
                    out.setdefault(arg, get_named_type(a.type).name)
    return out


def _declared_filters(schema: GraphQLSchema, gtype: GraphQLObjectType, view: dict[str, Any],
                      at: str) -> tuple[FilterColumn, ...]:
    args = _equality_args(schema, gtype.name)
    names = ["id", *args, *(view.get("filters") or ())]
    out: dict[str, FilterColumn] = {}
    for name in names:
        if name in out:
            continue
        if not _GRAPHQL_NAME.match(name):
            raise SchemaError(f"{at}: @view filters names {name!r}, not a GraphQL field name")
        field_def = gtype.fields.get(name)
        scalar = get_named_type(field_def.type).name if field_def is not None else args.get(name)
        if scalar is None:
            raise SchemaError(f"{at}: @view filters names {name}, neither a field of {gtype.name} nor an argument of "
                              f"its list fields: its GraphQL scalar is unknown (add a field {name} to {gtype.name})")
        if scalar not in OPERATORS:
            raise SchemaError(f"{at}: @view filters names {name} of type {scalar}; filters apply to "
                              f"{', '.join(OPERATORS)}")
        out[name] = FilterColumn(name, snake_case(name), scalar)
    return tuple(out.values())


def _declared_sortable(gtype: GraphQLObjectType, view: dict[str, Any], at: str) -> tuple[SortColumn, ...]:
    order = view.get("orderBy") or "id"
    columns = ["id", *(part.split()[0] for part in order.split(",") if part.split())]
    columns += [snake_case(n) for n in view.get("sortable") or ()]
    out: dict[str, SortColumn] = {}
    for column in columns:
        name = camel_case(column)
        if not _GRAPHQL_NAME.match(name):
            raise SchemaError(f"{at}: sortable column {column!r} is not a GraphQL name")
        out.setdefault(name, SortColumn(name, column))
    return tuple(out.values())


_GRAPHQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def _walk_plan(schema: GraphQLSchema) -> dict[str, tuple[tuple[str, str, bool], ...]]:
    """Per object type, the fields that hold objects: (data key, named type, is a list)."""
    roots = {schema.query_type, schema.mutation_type, schema.subscription_type}
    plan: dict[str, tuple[tuple[str, str, bool], ...]] = {}
    for gtype in schema.type_map.values():
        if gtype.name.startswith("__") or gtype in roots or not isinstance(gtype, GraphQLObjectType):
            continue
        fields = []
        for fname, fdef in gtype.fields.items():
            named, is_list = _unwrap_list(fdef.type)
            if isinstance(named, GraphQLObjectType):
                fields.append((snake_case(fname), named.name, is_list))
        plan[gtype.name] = tuple(fields)
    return plan


def _attach_field_resolvers(schema: GraphQLSchema) -> None:
    """Every non-root field reads source[snake_case(name)] from the JSONB dict.

    Dependencies are not recorded here: the root resolver walks the full `data`
    the database returned (fraiseshm/graphql/deps.py), whatever was selected."""
    roots = {schema.query_type, schema.mutation_type, schema.subscription_type}
    for gtype in schema.type_map.values():
        if gtype.name.startswith("__") or gtype in roots:
            continue
        if isinstance(gtype, GraphQLInterfaceType) and gtype.name == "Node":
            gtype.resolve_type = _resolve_node_type
        if not isinstance(gtype, GraphQLObjectType):
            continue
        for fname, fdef in gtype.fields.items():
            if gtype.name == "UpdatedEntity" and fname == "entity":
                fdef.resolve = _resolve_cascade_entity
            elif gtype.name in CASCADE_TYPES:
                fdef.resolve = _key_resolver(fname)  # the spec-shaped dict: camelCase keys
            else:
                fdef.resolve = _key_resolver(snake_case(fname))


def _key_resolver(key: str):  # noqa: ANN202 - graphql resolver signature
    def resolve(source: Any, _info: Any, **_args: Any) -> Any:
        return source.get(key) if isinstance(source, dict) else None

    return resolve


def _snake_keys(value: Any) -> Any:
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    if isinstance(value, dict):
        return {snake_case(k): _snake_keys(v) for k, v in value.items()}
    return value


def _resolve_cascade_entity(source: Any, _info: Any) -> Any:
    """The spec dict's entity is GraphQL-shaped (camelCase, fraiseshm/cascade/spec.py); the
    entity types read snake_case keys like every view's `data`."""
    entity = source.get("entity")
    return _snake_keys(entity) if isinstance(entity, dict) else entity


def _resolve_cascade_info(_source: Any, _info: Any) -> dict[str, Any]:
    return {"version": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS),
            "experimentalFeatures": [], "deprecatedFeatures": list(DEPRECATED_FEATURES)}


def _resolve_node_type(value: Any, _info: Any, _type: Any) -> str | None:
    return value.get("__typename") if isinstance(value, dict) else None
