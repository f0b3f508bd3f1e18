"""Cache dependencies collected while a query executes on a miss.

Tag vocabulary (shared with fraiseshm/cascade/tags.py, which bumps them):

- ``Type:id``     every object of a @view type in the result (and the id asked
                  for by a root field that found nothing);
- ``Type:*``      every list of that type: bumped by any create/update/delete,
                  so no cached list survives a change of its membership;
- ``type:Type``   every entry holding that type at all: bumped only by the
                  safe wider invalidation after a bad or truncated cascade;
- ``query:field`` every root field: bumped by cascade query invalidations.
"""

from __future__ import annotations

from typing import Any

from fraiseshm.graphql.schema import EntityType


class Dependencies:
    __slots__ = ("tags", "_ttl", "_default_ttl", "private")

    def __init__(self, default_ttl: float) -> None:
        self.tags: set[str] = set()
        self._default_ttl = default_ttl
        self._ttl: float | None = None
        self.private = False  # the result holds a type marked @cache(private: true)

    @property
    def ttl(self) -> float:
        """Seconds: the smallest TTL of the types in the result (a type's @cache(ttl)
        or else the configured default)."""
        return self._default_ttl if self._ttl is None else self._ttl

    def root(self, field: str) -> None:
        self.tags.add("query:" + field)

    def record(self, entity: EntityType, value: Any, is_list: bool) -> None:
        name = entity.name
        self.tags.add("type:" + name)
        ttl = self._default_ttl if entity.ttl is None else entity.ttl
        if self._ttl is None or ttl < self._ttl:
            self._ttl = ttl
        if entity.private:
            self.private = True
        if is_list:
            self.tags.add(name + ":*")
            for item in value or ():
                if isinstance(item, dict) and item.get("id") is not None:
                    self.tags.add(f"{name}:{item['id']}")
        elif isinstance(value, dict) and value.get("id") is not None:
            self.tags.add(f"{name}:{value['id']}")

    def record_missing(self, entity: EntityType, entity_id: str) -> None:
        """A root field found no row: the entry depends on that id appearing."""
        self.record(entity, None, False)
        self.tags.add(f"{entity.name}:{entity_id}")
