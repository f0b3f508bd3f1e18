"""Cost limits of a GraphQL document, checked before it is validated or executed.

Every limit is a setting with a safe default, and an error names the setting
that refused the document. The checks run on the parsed document *before*
graphql-core's validation, whose rules (OverlappingFieldsCanBeMerged) are
quadratic in the number of fields: a document must be known to be small
before anything super-linear touches it.

Fragment expansion is memoised: each fragment's totals (fields, depth, rows)
are computed once and reused at every spread, so a chain of fragments that
each spread the next twice costs O(fragments), not 2^k. The totals are the
*expanded* figures (Python integers, exact however large), so such a chain
is refused by its expanded field count.

List fan-out estimates the rows a query may return: a list field multiplies
what is under it by its page size (its ``limit`` argument, a variable's value,
or the argument's default), a list without a ``limit`` (a relation nested in
a view's JSON) by NESTED_LIST_ESTIMATE. A document whose page sizes are
variables is re-checked with each request's variables (``fanout``).

Introspection (``__schema``, ``__type``) is bounded by its own rule, not by
max_depth: its answer is the schema's, whatever the data, so depth costs only
what the selection spells out. The standard introspection query nests 14
levels (``types > fields > args > type > ofType`` x 9) and is answered and
cached under the default limits; an introspection subtree may nest
MAX_INTROSPECTION_DEPTH levels, and its lists that lead back to types
(``fields``, ``interfaces``, ``possibleTypes``, ``inputFields``) may nest
MAX_INTROSPECTION_LISTS deep (graphql-js's MaxIntrospectionDepthRule): the
``fields { type { fields { type ...`` cycle, whose answer grows as the
schema's size to the power of the nesting, is refused before validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from graphql.execution.values import get_directive_values

from fraiseshm.errors import LimitExceeded

NESTED_LIST_ESTIMATE = 10  # rows assumed for a list nested in a view's JSON (no limit argument)
DEFAULT_PAGE = 20  # rows of a list field whose limit argument has no default (the resolvers' own)
MAX_TYPE_FIELDS = 10  # `__type(name:)` lookups per document (GraphiQL asks a few)
MAX_INTROSPECTION_DEPTH = 20  # nesting under __schema/__type (the standard query: 14; type_depth 15: 20)
MAX_INTROSPECTION_LISTS = 2  # nesting of introspection lists that lead back to types (standard query: 1)
_TYPE_LISTS = frozenset(("fields", "interfaces", "possibleTypes", "inputFields"))


@dataclass(frozen=True, slots=True)
class Limits:
    max_document_bytes: int = 16 * 1024  # query text, UTF-8 bytes
    max_tokens: int = 4000  # lexical tokens (graphql-core stops the parser there)
    max_depth: int = 12  # selection-set nesting, introspection excluded
    max_fields: int = 500  # fields and aliases after fragment expansion
    max_root_fields: int = 20  # root fields per operation: each one is one SQL statement
    max_list_fanout: int = 20_000  # estimated rows: page size x nesting
    max_operations: int = 10  # operation definitions per document
    max_fragments: int = 50  # fragment definitions per document
    introspection: bool = True  # __schema / __type allowed (at most one __schema)


@dataclass(frozen=True, slots=True)
class Cost:
    """The expanded figures of one operation (introspection fields not in depth/rows)."""

    fields: int
    depth: int
    root_fields: int
    rows: int  # estimated with the variables' defaults when page sizes are variables
    variable_pages: bool  # some page size is a variable: re-check rows per request
    private: bool = False  # the operation can return a type marked @cache(private: true)


def check_source(query: str, limits: Limits) -> None:
    size = len(query.encode()) if len(query) * 4 > limits.max_document_bytes else len(query)
    if size > limits.max_document_bytes:
        raise LimitExceeded(
            f"the document is {size} bytes; the limit is {limits.max_document_bytes}", "max_document_bytes"
        )


def private_types(schema: GraphQLSchema) -> frozenset[str]:
    """Object types marked @cache(private: true), with or without @view, and every
    interface or union that can resolve to one."""
    directive = schema.get_directive("cache")
    if directive is None:
        return frozenset()
    private = {
        t.name for t in schema.type_map.values()
        if isinstance(t, GraphQLObjectType) and t.ast_node is not None
        and (get_directive_values(directive, t.ast_node) or {}).get("private")
    }
    abstract = {
        t.name for t in schema.type_map.values()
        if isinstance(t, (GraphQLInterfaceType, GraphQLUnionType))
        and any(p.name in private for p in schema.get_possible_types(t))
    }
    return frozenset(private | abstract)


def check_document(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode, limits: Limits,
    private: frozenset[str] = frozenset(),
) -> Cost:
    """Refuse a document over any limit; return its cost. Linear in the document's size."""
    operations = fragments = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            operations += 1
        elif isinstance(definition, FragmentDefinitionNode):
            fragments += 1
    if operations > limits.max_operations:
        raise LimitExceeded(f"the document has {operations} operations; the limit is {limits.max_operations}",
                            "max_operations")
    if fragments > limits.max_fragments:
        raise LimitExceeded(f"the document has {fragments} fragments; the limit is {limits.max_fragments}",
                            "max_fragments")
    walk = _Walk(schema, document, operation, None, private)
    totals = walk.operation_totals()
    if walk.schema_fields and not limits.introspection:
        raise LimitExceeded("introspection is switched off on this server", "introspection")
    if walk.schema_fields > 1:
        raise LimitExceeded(f"__schema is asked {walk.schema_fields} times; it may be asked once per document",
                            "introspection")
    if walk.type_fields > MAX_TYPE_FIELDS:
        raise LimitExceeded(f"__type is asked {walk.type_fields} times; the limit is {MAX_TYPE_FIELDS}",
                            "introspection")
    if walk.introspection_depth > MAX_INTROSPECTION_DEPTH:
        raise LimitExceeded(f"introspection is nested {walk.introspection_depth} levels deep; "
                            f"the limit is {MAX_INTROSPECTION_DEPTH}", "introspection")
    if walk.introspection_lists > MAX_INTROSPECTION_LISTS:
        raise LimitExceeded(f"introspection nests fields/interfaces/possibleTypes/inputFields "
                            f"{walk.introspection_lists} deep; the limit is {MAX_INTROSPECTION_LISTS}", "introspection")
    root_fields = walk.root_fields
    if totals.fields > limits.max_fields:
        raise LimitExceeded(
            f"the query selects {totals.fields} fields (aliases and fragment spreads expanded); "
            f"the limit is {limits.max_fields}", "max_fields")
    if root_fields > limits.max_root_fields:
        raise LimitExceeded(
            f"the query has {root_fields} root fields (one SQL statement each); the limit is {limits.max_root_fields}",
            "max_root_fields")
    if totals.depth > limits.max_depth:
        raise LimitExceeded(f"the query is nested {totals.depth} levels deep; the limit is {limits.max_depth}",
                            "max_query_depth")
    cost = Cost(totals.fields, totals.depth, root_fields, totals.rows, walk.variable_pages, walk.private)
    check_rows(cost.rows, limits)
    return cost


def fanout(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode,
           variables: dict[str, Any] | None, limits: Limits) -> int:
    """Estimated rows with this request's page sizes; refuses a request over max_list_fanout."""
    rows = _Walk(schema, document, operation, variables or {}).operation_totals().rows
    check_rows(rows, limits)
    return rows


def check_rows(rows: int, limits: Limits) -> None:
    if rows > limits.max_list_fanout:
        raise LimitExceeded(
            f"the query may return about {rows} rows (page sizes x nesting, {NESTED_LIST_ESTIMATE} "
            f"assumed per nested list); the limit is {limits.max_list_fanout}", "max_list_fanout")


@dataclass(frozen=True, slots=True)
class _Totals:
    fields: int
    depth: int
    rows: int
    roots: int  # fields directly in this selection set (through fragments): root fields at the top
    lists: int = 0  # nesting of introspection lists leading back to types (_TYPE_LISTS)


_EMPTY = _Totals(0, 0, 0, 0)


class _Walk:
    """One memoised pass over an operation. Unknown fields and types are skipped:
    validation (which runs next, on a document now known to be small) reports them."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode,
                 variables: dict[str, Any] | None, private: frozenset[str] = frozenset()) -> None:
        self.schema = schema
        self.private_types = private
        self.private = False
        self.operation = operation
        self.variables = variables  # None: page sizes that are variables count with their defaults
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self.defaults = {
            v.variable.name.value: int(v.default_value.value)
            for v in operation.variable_definitions or ()
            if isinstance(v.default_value, IntValueNode)
        }
        self.memo: dict[str, _Totals] = {}
        self.active: set[str] = set()
        self.schema_fields = 0  # counted once per distinct node: memoised fragments count once
        self.type_fields = 0
        self.introspection_depth = 0  # deepest __schema/__type subtree, the field itself included
        self.introspection_lists = 0
        self.root_fields = 0
        self.variable_pages = False

    def operation_totals(self) -> _Totals:
        totals = self.selection_set(self.operation.selection_set, self.schema.get_root_type(self.operation.operation))
        self.root_fields = totals.roots
        return totals

    def selection_set(self, selection_set: SelectionSetNode | None, parent: Any) -> _Totals:
        if selection_set is None:
            return _EMPTY
        fields = depth = rows = roots = lists = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                sub = self.field(selection, parent)
                roots += not selection.name.value.startswith("__")
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is not None and condition.name.value in self.private_types:
                    self.private = True
                sub = self.selection_set(selection.selection_set,
                                         self.schema.get_type(condition.name.value) if condition else parent)
                roots += sub.roots
            elif isinstance(selection, FragmentSpreadNode):
                sub = self.spread(selection.name.value)
                roots += sub.roots
            else:
                continue
            fields += sub.fields
            depth = max(depth, sub.depth)
            rows += sub.rows
            lists = max(lists, sub.lists)
        return _Totals(fields, depth, rows, roots, lists)

    def spread(self, name: str) -> _Totals:
        totals = self.memo.get(name)
        if totals is not None:
            return totals
        fragment = self.fragments.get(name)
        if fragment is None or name in self.active:
            return _EMPTY  # unknown fragment or a cycle: validation refuses the document
        self.active.add(name)
        totals = self.selection_set(fragment.selection_set, self.schema.get_type(fragment.type_condition.name.value))
        self.active.discard(name)
        self.memo[name] = totals
        return totals

    def field(self, node: FieldNode, parent: Any) -> _Totals:
        name = node.name.value
        if name.startswith("__"):
            if name == "__schema":
                self.schema_fields += 1
            elif name == "__type":
                self.type_fields += 1
            # Introspection is bounded by its own rule (module docstring): its fields count,
            # its depth and lists are checked apart, and neither adds to the operation's depth or rows.
            inner = self.selection_set(node.selection_set, None)
            self.introspection_depth = max(self.introspection_depth, 1 + inner.depth)
            self.introspection_lists = max(self.introspection_lists, inner.lists)
            return _Totals(1 + inner.fields, 0, 0, 0)
        if parent is None or parent.name.startswith("__"):
            # under __schema/__type, typed fragments (on __Type) included; or an unknown field,
            # which validation refuses
            inner = self.selection_set(node.selection_set, _introspection_type(parent, name))
            return _Totals(1 + inner.fields, 1 + inner.depth, 0, 0, inner.lists + (name in _TYPE_LISTS))
        field_def = parent.fields.get(name) if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)) else None
        field_type = field_def.type if field_def is not None else None
        named = get_named_type(field_type) if field_type is not None else None
        if named is not None and named.name in self.private_types:
            self.private = True
        inner = self.selection_set(node.selection_set, named)
        depth = 1 + inner.depth
        if isinstance(parent, GraphQLObjectType) and name == "edges" and parent.name.endswith("Connection") \
                and "pageInfo" in parent.fields:
            return _Totals(1 + inner.fields, depth, inner.rows, 0)  # counted at the connection field (first/last)
        if field_type is not None and (_is_list(field_type) or "first" in field_def.args):
            page = self.page_size(node, field_def)
            return _Totals(1 + inner.fields, depth, page * (1 + inner.rows), 0)
        return _Totals(1 + inner.fields, depth, inner.rows, 0)

    def page_size(self, node: FieldNode, field_def: Any) -> int:
        if "first" in field_def.args:  # a Relay connection: first or last rows (the resolver's default 20)
            given = [a for a in node.arguments or () if a.name.value in ("first", "last")]
            return max((self._page_argument(a, field_def) for a in given), default=DEFAULT_PAGE)
        if "limit" not in field_def.args:
            return NESTED_LIST_ESTIMATE
        for argument in node.arguments or ():
            if argument.name.value != "limit":
                continue
            return self._page_argument(argument, field_def)
        return _as_int(None, field_def)

    def _page_argument(self, argument: Any, field_def: Any) -> int:
        value = argument.value
        if isinstance(value, IntValueNode):
            return max(0, int(value.value))
        if isinstance(value, VariableNode):
            self.variable_pages = True
            given = (self.variables or {}).get(value.name.value, self.defaults.get(value.name.value))
            return max(0, given) if isinstance(given, int) else _as_int(given, field_def)
        return _as_int(None, field_def)


def _introspection_type(parent: Any, name: str) -> Any:
    """The named type of an introspection field (for the fragments spread under it)."""
    field_def = parent.fields.get(name) if isinstance(parent, GraphQLObjectType) else None
    return get_named_type(field_def.type) if field_def is not None else None


def _as_int(value: Any, field_def: Any) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return max(0, int(value))
    argument = field_def.args.get("limit")
    if argument is None:
        return DEFAULT_PAGE  # first/last: the resolver's default
    if isinstance(argument.default_value, int):
        return max(0, argument.default_value)
    node = argument.ast_node.default_value if argument.ast_node is not None else None
    return max(0, int(node.value)) if isinstance(node, IntValueNode) else DEFAULT_PAGE


def _is_list(gtype: Any) -> bool:
    if isinstance(gtype, GraphQLNonNull):
        gtype = gtype.of_type
    return isinstance(gtype, GraphQLList)


__all__ = ["Cost", "Limits", "check_document", "check_source", "fanout", "private_types"]
