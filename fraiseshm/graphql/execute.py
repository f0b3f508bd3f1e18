"""Parse, validate and execute GraphQL documents on a cache miss.

Prepared documents are kept in a bounded per-worker LRU keyed by the query
text: a hot query is parsed and validated once per worker. Root query fields
run one SQL statement each; root mutation fields call their PostgreSQL
function and hand the response to ``context.on_mutation`` (the cache layer
invalidates from the cascade there, after commit and before the response, and
returns the field's graphql-cascade payload: fraiseshm/cascade/spec.py).

Arguments are bound with the PostgreSQL type of the column they compare to
(read from the catalog at start: fraiseshm/graphql/catalog.py): sent as text
and cast in SQL (``$1::text::bigint``), after a check here that turns a
malformed value into a GraphQL error naming the field and the type.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    print_ast,
    validate,
)

from fraiseshm.cascade import spec
from fraiseshm.db.pool import Database
from fraiseshm.errors import LimitExceeded, RequestError
from fraiseshm.graphql.connections import decode_cursor, encode_cursor, keyset, order_sql, total
from fraiseshm.graphql.deps import Binding, Dependencies
from fraiseshm.graphql.filters import FilterLimits, Params, WhereCompiler, quote_ident
from fraiseshm.graphql.limits import Cost, Limits, check_document, check_source, private_types
from fraiseshm.graphql.schema import RootMutation, RootQuery, ServedSchema, camel_case, snake_case

MAX_LIST_LIMIT = 1000
DOCUMENT_MEMORY_FACTOR = 160  # bytes of parsed + validated document per byte of text (tracemalloc: 50-130)


class GraphQLRequestError(RequestError):
    """Syntax, validation or operation-selection error: carries GraphQL errors."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Prepared:
    document: DocumentNode
    operation: OperationDefinitionNode
    operation_name: str | None
    is_mutation: bool
    digest: bytes  # hash of the normalised document (print_ast) + operation name
    cost: Cost | None = None  # figures checked against the limits (fraiseshm/graphql/limits.py)
    variable_names: frozenset[str] = frozenset()  # variables the operation declares (the rest are not keyed)
    query: str = ""  # the text it was compiled from (the cache's key)


@dataclass(frozen=True, slots=True)
class MutationCall:
    """What the mutation's own transaction recorded besides the function's response."""

    changes: str | None  # the triggers' fraiseshm.changes setting ("r:public.orders:8 +r:public.customers:3 ...")
    transaction_id: str | None  # txid_current_if_assigned(); None if nothing was written
    seconds: float  # the function call as the server saw it


@dataclass(slots=True)
class ExecutionContext:
    deps: Dependencies
    # invalidates from the cascade; returns the field's payload (None: the response was unreadable)
    on_mutation: Callable[[RootMutation, Any, MutationCall], Awaitable[dict[str, Any] | None]] | None = None
    record_changes: bool = True  # read what the triggers recorded (invalidation, cascade verification)


def _select_operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name:
        for op in ops:
            if op.name and op.name.value == name:
                return op
        raise GraphQLRequestError([GraphQLError(f"Unknown operation named '{name}'.")])
    if len(ops) != 1:
        raise GraphQLRequestError([GraphQLError("Must provide operation name if query contains multiple operations.")])
    return ops[0]


def _limit_error(exc: LimitExceeded) -> GraphQLError:
    return GraphQLError(str(exc), extensions={"code": "LIMIT_EXCEEDED", "limit": exc.setting})


_INT_RANGE = {"smallint": 1 << 15, "integer": 1 << 31, "bigint": 1 << 63}
_BOOL = {"true": "true", "false": "false", "t": "true", "f": "false"}


def bind_text(value: Any, pg_type: str, field: str, arg: str) -> str:
    """A GraphQL argument value -> the text PostgreSQL casts to pg_type; GraphQLError if it cannot be one."""
    def bad() -> GraphQLError:
        return GraphQLError(f"{field}: argument {arg}: {value!r} is not a valid {pg_type}")

    if isinstance(value, dict | list):
        raise bad()
    if pg_type in _INT_RANGE:
        if isinstance(value, bool):
            raise bad()
        try:
            number = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
        except ValueError:
            raise bad() from None
        limit = _INT_RANGE[pg_type]
        if not -limit <= number < limit:
            raise bad()
        return str(number)
    if pg_type == "uuid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise bad() from None
    if pg_type == "boolean":
        text = str(value).lower()
        if text not in _BOOL:
            raise bad()
        return _BOOL[text]
    if pg_type.startswith("numeric") or pg_type in ("real", "double precision"):
        try:
            if isinstance(value, bool):
                raise ValueError
            decimal.Decimal(str(value))
        except (ValueError, decimal.InvalidOperation):
            raise bad() from None
        return str(value)
    if pg_type.startswith(("timestamp", "date")):
        # ISO 8601 only: PostgreSQL also reads 'now' or 'yesterday', which a cached answer must not mean.
        try:
            parsed = (datetime.date.fromisoformat if pg_type == "date" else datetime.datetime.fromisoformat)(str(value))
        except ValueError:
            raise bad() from None
        return parsed.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _page_sql(view: str, predicate: str, order: tuple[tuple[str, bool], ...], limit: str, offset: str | None,
              *, reverse: bool = False, cursor: bool = False) -> str:
    """One page of a view. PERF: the page's ids are chosen first and only those rows' `data` is
    composed: a plain OFFSET over the view would build `data` for every skipped row too
    (OFFSET 1000 on posts: 57 ms vs 3 ms). cursor: each row is [data, [sort key texts]]."""
    keys = ", ".join(quote_ident(c) for c in dict.fromkeys(["id", *(c for c, _ in order)]))
    what = "v.data"
    if cursor:
        what = "jsonb_build_array(v.data, jsonb_build_array(" + ", ".join(
            f"page.{quote_ident(c)}::text" for c, _ in order) + "))"
    return (f"SELECT {what} FROM (SELECT {keys} FROM {view} WHERE {predicate}"
            f" ORDER BY {order_sql(order, reverse=reverse)} LIMIT {limit}"
            + (f" OFFSET {offset}" if offset else "")
            + f") page JOIN {view} v USING (id) ORDER BY {order_sql(order, 'page.', reverse=reverse)}")


async def _resolve_total_count(source: Any, _info: Any) -> Any:
    """A connection's totalCount: counted only when selected (same predicate, same dependencies)."""
    db, sql, params = source["_count"]
    rows = await db.fetch_column(sql, params)
    return rows[0]


def _to_snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {snake_case(k): _to_snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_snake(v) for v in value]
    return value


class Executor:
    def __init__(
        self,
        served: ServedSchema,
        db: Database,
        *,
        max_depth: int,
        max_documents: int,
        limits: Limits | None = None,
        max_document_cache_bytes: int = 64 << 20,
        filter_limits: FilterLimits | None = None,
    ) -> None:
        self.served = served
        self.filter_limits = filter_limits or FilterLimits()
        self.db = db
        self.limits = limits or Limits(max_depth=max_depth)
        self.max_documents = max_documents
        self.max_cache_bytes = max_document_cache_bytes
        self._prepared: OrderedDict[tuple[str, str | None], Prepared] = OrderedDict()
        self._cached_bytes = 0  # estimated memory of the prepared documents kept
        self.private_types = private_types(served.schema)  # results holding one are scoped per identity
        schema = served.schema
        for name, root in served.queries.items():
            schema.query_type.fields[name].resolve = self._query_resolver(root)  # type: ignore[union-attr]
            if root.kind == "connection":
                connection = schema.get_type(root.entity.name + "Connection")
                connection.fields["totalCount"].resolve = _resolve_total_count  # type: ignore[union-attr]
        for name, mutation in served.mutations.items():
            schema.mutation_type.fields[name].resolve = self._mutation_resolver(mutation)  # type: ignore[union-attr]

    def rebound(self) -> None:
        """The schema was re-bound (a view changed): statements read the new bindings per request."""

    # --- documents ----------------------------------------------------------

    def prepare(self, query: str, operation_name: str | None) -> Prepared:
        """Parse + check the limits + validate once per (query text, operation) per worker."""
        return self.cached(query, operation_name) or self.remember(self.compile(query, operation_name))

    def cached(self, query: str, operation_name: str | None) -> Prepared | None:
        cache_key = (query, operation_name)
        prepared = self._prepared.get(cache_key)
        if prepared is not None:
            self._prepared.move_to_end(cache_key)
        return prepared

    def compile(self, query: str, operation_name: str | None) -> Prepared:
        """Parse, check the limits, validate. Touches nothing shared: a large
        document may be compiled in a thread, off the event loop."""
        try:
            check_source(query, self.limits)
            document = parse(query, max_tokens=self.limits.max_tokens)
            operation = _select_operation(document, operation_name)
            # INVARIANT: the limits are checked before validate(), whose rules are super-linear.
            cost = check_document(self.served.schema, document, operation, self.limits, self.private_types)
        except GraphQLError as exc:
            raise GraphQLRequestError([exc]) from None
        except LimitExceeded as exc:
            raise GraphQLRequestError([_limit_error(exc)]) from None
        except RecursionError:
            raise GraphQLRequestError([_limit_error(LimitExceeded("the document nests too deeply to parse", "max_query_depth"))]) from None
        errors = validate(self.served.schema, document)
        if errors:
            raise GraphQLRequestError(list(errors))
        normalised = print_ast(document).encode()
        digest = hashlib.blake2b(normalised + b"\0" + (operation_name or "").encode(), digest_size=16).digest()
        return Prepared(
            document=document,
            operation=operation,
            operation_name=operation_name,
            is_mutation=operation.operation == OperationType.MUTATION,
            digest=digest,
            cost=cost,
            variable_names=frozenset(v.variable.name.value for v in operation.variable_definitions or ()),
            query=query,
        )

    def remember(self, prepared: Prepared) -> Prepared:
        """Keep a compiled document: an LRU bounded in entries and in estimated bytes
        (a parsed document takes up to DOCUMENT_MEMORY_FACTOR x its text)."""
        cache_key = (prepared.query, prepared.operation_name)
        if cache_key in self._prepared:
            return self._prepared[cache_key]
        self._prepared[cache_key] = prepared
        self._cached_bytes += len(prepared.query) * DOCUMENT_MEMORY_FACTOR
        while self._prepared and (len(self._prepared) > self.max_documents or self._cached_bytes > self.max_cache_bytes):
            (old_query, _), _ = self._prepared.popitem(last=False)
            self._cached_bytes -= len(old_query) * DOCUMENT_MEMORY_FACTOR
        return prepared

    async def run(self, prepared: Prepared, variables: dict[str, Any] | None, context: ExecutionContext) -> ExecutionResult:
        result = execute(
            self.served.schema,
            prepared.document,
            variable_values=variables,
            operation_name=prepared.operation_name,
            context_value=context,
        )
        if isinstance(result, Awaitable):
            result = await result
        return result

    # --- root resolvers -----------------------------------------------------

    def _binding(self, root: RootQuery) -> Binding:
        binding = self.served.bindings.get(root.entity.name)
        if binding is None:
            raise RuntimeError(f"schema not bound to the database: no catalog facts for {root.entity.name}")
        return binding

    def _query_resolver(self, root: RootQuery):  # noqa: ANN202 - graphql resolver
        entity = root.entity

        async def resolve_one(_source: Any, info: Any, id: Any) -> Any:  # noqa: A002 - GraphQL arg name
            binding = self._binding(root)
            key = bind_text(id, binding.key_type, root.field, "id")
            deps: Dependencies = info.context.deps
            deps.root(root.field)
            rows = await self.db.fetch_column(f"SELECT data FROM {entity.view} WHERE id = $1::text::{binding.key_type}",
                                              (key,))
            deps.rows(entity, rows, is_list=False, asked=key)
            return rows[0] if rows else None

        async def resolve_list(_source: Any, info: Any, limit: int = 20, offset: int = 0, where: Any = None,
                               orderBy: Any = None, **filters: Any) -> Any:  # noqa: N803 - GraphQL arg name
            if not 0 <= limit <= MAX_LIST_LIMIT:
                raise GraphQLError(f"{root.field}: limit must be between 0 and {MAX_LIST_LIMIT}, got {limit}")
            if offset < 0:
                raise GraphQLError(f"{root.field}: offset must be >= 0, got {offset}")
            binding = self._binding(root)
            params = Params()
            predicate, membership, parents = self._predicate(root, binding, where, filters, params)
            order = self._ordering(root, orderBy)
            sql = _page_sql(entity.view, predicate, order, params.add(limit, "int"), params.add(offset, "int"))
            deps: Dependencies = info.context.deps
            deps.root(root.field)
            rows = await self.db.fetch_column(sql, params.values)
            deps.rows(entity, rows, is_list=True, membership=membership,
                      extra=parents | self._column_tags(binding, [where, self._equality(root, filters)], order))
            return rows

        async def resolve_count(_source: Any, info: Any, where: Any = None, **filters: Any) -> Any:
            binding = self._binding(root)
            params = Params()
            predicate, membership, parents = self._predicate(root, binding, where, filters, params)
            deps: Dependencies = info.context.deps
            deps.root(root.field)
            rows = await self.db.fetch_column(f"SELECT count(*) FROM {entity.view} WHERE {predicate}", params.values)
            deps.rows(entity, [], is_list=True, membership=membership,
                      extra=parents | self._column_tags(binding, [where, self._equality(root, filters)], ()))
            return rows[0]

        async def resolve_connection(_source: Any, info: Any, where: Any = None, orderBy: Any = None,  # noqa: N803
                                     first: int | None = None, after: str | None = None, last: int | None = None,
                                     before: str | None = None, **filters: Any) -> Any:
            if first is not None and last is not None:
                raise GraphQLError(f"{root.field}: give first or last, not both")
            size = last if last is not None else (first if first is not None else 20)
            if not 0 <= size <= MAX_LIST_LIMIT:
                raise GraphQLError(f"{root.field}: first/last must be between 0 and {MAX_LIST_LIMIT}, got {size}")
            binding = self._binding(root)
            params = Params()
            predicate, membership, parents = self._predicate(root, binding, where, filters, params)
            order = total(self._ordering(root, orderBy))
            count_sql = f"SELECT count(*) FROM {entity.view} WHERE {predicate}"
            count_params = list(params.values)
            types = binding.columns

            def check(value: str, column: str) -> str:
                return bind_text(value, types[column], root.field, "cursor")

            conditions = [predicate]
            for arg, cursor, is_after in (("after", after, True), ("before", before, False)):
                if cursor is not None:
                    values = decode_cursor(root.field, arg, cursor, order)
                    conditions.append(keyset(order, values, types, params, check, after=is_after))
            backward = last is not None
            sql = _page_sql(entity.view, " AND ".join(conditions), order, params.add(size + 1, "int"), None,
                            reverse=backward, cursor=True)
            deps: Dependencies = info.context.deps
            deps.root(root.field)
            rows = await self.db.fetch_column(sql, params.values)
            more = len(rows) > size
            rows = rows[:size]
            if backward:
                rows.reverse()
            deps.rows(entity, [r[0] for r in rows], is_list=True, membership=membership,
                      extra=parents | self._column_tags(binding, [where, self._equality(root, filters)], order))
            edges = [{"node": r[0], "cursor": encode_cursor(order, r[1])} for r in rows]
            return {
                "edges": edges,
                "page_info": {
                    "has_next_page": more if not backward else before is not None,
                    "has_previous_page": more if backward else after is not None,
                    "start_cursor": edges[0]["cursor"] if edges else None,
                    "end_cursor": edges[-1]["cursor"] if edges else None,
                },
                "_count": (self.db, count_sql, count_params),
            }

        if root.kind == "connection":
            return resolve_connection
        if root.kind == "count":
            return resolve_count
        return resolve_list if root.is_list else resolve_one

    def _predicate(self, root: RootQuery, binding: Binding, where: Any, filters: dict[str, Any],
                   params: Params) -> tuple[str, set[str] | None, set[str]]:
        """The equality arguments AND the where input -> SQL, the list's membership tags (None: t:),
        and the tags of the parent rows its values were read from (filters.Column.parent)."""
        compiler = WhereCompiler(root.field, binding.filters, params, bind_text, self.filter_limits)
        equal = self._equality(root, filters)
        parts = [compiler.compile(equal)] if equal else []
        if where is not None:
            parts.append(compiler.compile(where))
        precise = [c.tags for c in parts if c.tags is not None]
        sql = " AND ".join(c.sql for c in parts) or "TRUE"
        return sql, min(precise, key=len) if precise else None, compiler.extra

    @staticmethod
    def _equality(root: RootQuery, filters: dict[str, Any]) -> dict[str, Any]:
        """The list field's equality arguments (``posts(authorId: ...)``) as a where input."""
        return {arg: {"eq": filters[arg]} for arg, _ in root.filters if filters.get(arg) is not None}

    def _ordering(self, root: RootQuery, order_by: Any) -> tuple[tuple[str, bool], ...]:
        if not order_by:
            return total(root.entity.order)
        sortable = {s.name: s.column for s in root.entity.sortable}
        if len(order_by) > len(sortable):
            raise GraphQLError(f"{root.field}: orderBy names more columns than there are ({len(sortable)})")
        order = []
        for item in order_by:
            column = sortable.get(item.get("field")) if isinstance(item, dict) else None
            if column is None:
                raise GraphQLError(f"{root.field}: orderBy: {item!r} is not a sortable column")
            order.append((column, item.get("direction") == "DESC"))
        return total(order)

    @staticmethod
    def _column_tags(binding: Binding, where: Any, order: Any) -> set[str]:
        """Tags of the filter and sort columns read from other rows than the view's root row."""
        used = {column for column, _ in order}
        stack = [where]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                for key, value in item.items():
                    if key in ("_and", "_or", "_not"):
                        stack.append(value)
                    elif key in binding.filters and binding.filters[key].parent is None:
                        used.add(binding.filters[key].column)  # a parent's key: in _predicate's tags
        tags: set[str] = set()
        for column in used:
            tags |= binding.column_tags.get(column, frozenset())
        return tags

    def _mutation_resolver(self, mutation: RootMutation):  # noqa: ANN202
        async def resolve(_source: Any, info: Any, input: dict[str, Any]) -> Any:  # noqa: A002
            context: ExecutionContext = info.context
            started = time.perf_counter()
            if context.record_changes:
                response, changes, txid = await self.db.call_mutation(mutation.function, _to_snake(input))
            else:
                response, changes, txid = await self.db.call_function(mutation.function, _to_snake(input)), None, None
            call = MutationCall(changes, txid, time.perf_counter() - started)
            if context.on_mutation is not None:
                payload = await context.on_mutation(mutation, response, call)
            else:
                parsed = spec.parse(response)
                payload = None if not isinstance(response, dict) else spec.to_payload(parsed, spec.to_cascade(parsed))
            if payload is None:
                raise GraphQLError(f"{mutation.function} returned {type(response).__name__}, not a JSON object or composite")
            return payload

        return resolve


__all__ = ["Executor", "ExecutionContext", "GraphQLRequestError", "MutationCall", "Prepared", "camel_case"]
