"""Which root query fields a mutation affects: graphql-cascade QueryInvalidations.

Computed from the same facts the server cache invalidates by (fraiseshm/graphql/
deps.py): the tags the mutation bumped (its cascade's entities, what its
transaction's triggers recorded, a failure's wider invalidation) against what
a cached result of each root field depends on. A root field is named when a
result of it would be invalidated here:

- ``user(id: X)``, with its arguments, when X's own row changed
  (``r:<root table>:X``);
- ``user`` without arguments (EXACT: every argument set, REQ-103) when a row
  that results may nest changed (a post's author: the server cannot say which
  posts hold that author without a reverse index), or a table it follows
  coarsely / a wide change;
- a list field (``users``, ``posts(authorId: ...)``) without arguments when
  any table of its view's read set changed (membership, order, nested rows).

Deleted rows' own single-object queries get strategy REMOVE (even where a
hint without arguments invalidates the field), the rest INVALIDATE. A flush (an ALL invalidation) is one ALL hint.
"""

from __future__ import annotations

from collections.abc import Iterable

from fraiseshm.cascade.changes import table_of
from fraiseshm.cascade.spec import Hint
from fraiseshm.graphql.schema import ServedSchema


def query_hints(served: ServedSchema, tags: Iterable[str], *, flush: bool = False,
                deleted: Iterable[tuple[str, str]] = (), created: Iterable[tuple[str, str]] = ()) -> list[Hint]:
    """deleted / created: (typename, id) the cascade names so (a created row is nested in no
    result cached before it existed: it only reaches lists, and its own id's queries)."""
    if flush:
        return [Hint("ALL", "INVALIDATE")]
    tags = set(tags)
    new_rows = {f"r:{served.bindings[t].table}:{k}" for t, k in created if t in served.bindings}
    rows: dict[str, set[str]] = {}  # table -> keys of its rows that changed
    nestable: set[str] = set()  # tables with a changed row that results cached earlier may hold
    tables: set[str] = set()  # tables with any tag (r:, t:, w:)
    for tag in tags:
        if tag.startswith("r:"):
            table = table_of(tag)
            rows.setdefault(table, set()).add(tag[len(table) + 3:])
            tables.add(table)
            if tag not in new_rows:
                nestable.add(table)
        elif tag.startswith(("t:", "w:")):
            tables.add(tag[2:])
    gone = {(t, k) for t, k in deleted}
    out: list[Hint] = []
    for name, root in served.queries.items():
        binding = served.bindings.get(root.entity.name)
        if binding is None:
            continue
        reads = {f.table for f in binding.follows}
        if root.is_list:
            if ("query:" + name) in tags or reads & tables or binding.table in tables:
                out.append(Hint("EXACT", "INVALIDATE", name))
            continue
        # A single-object result depends on its static tags, its own row and the rows nested in it.
        nested = {t for t in reads if t != binding.table and t in nestable}
        every = ("query:" + name) in tags or bool(binding.static & tags) or bool(nested)
        if every:
            out.append(Hint("EXACT", "INVALIDATE", name))
        for key in sorted(rows.get(binding.table, ())):
            deleted = (root.entity.name, key) in gone
            if every and not deleted:
                continue  # the hint without arguments covers it
            arg: object = int(key) if root.id_type == "Int" and key.lstrip("-").isdigit() else key
            out.append(Hint("EXACT", "REMOVE" if deleted else "INVALIDATE", name, arguments={"id": arg}))
    return out
