"""The writer's memory of the dictionaries: the ids of the user and action names it has
stored lately, so a commit binds ids and SQLite looks up only the names it has not seen.

Bounded: past `limit` names the older half is forgotten (first learned, first gone; a name
still in use comes back at the cost of one lookup). Learned inside a commit's plan, and
forgotten with the rest of the catalog when a transaction fails, so an id rolled back never
stays in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

USER_NAMES = 100_000  # about 13 MB of ids like "user-1234567" (docs/performance.md)
ACTION_NAMES = 10_000


class Names:
    __slots__ = ("ids", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids: dict[str, int] = {}

    def learn(self, pairs: Iterable[tuple[str, int]]) -> None:
        ids = self.ids
        ids.update(pairs)
        if len(ids) > self.limit:
            for name in list(islice(ids, len(ids) - self.limit // 2)):
                del ids[name]

    def __len__(self) -> int:
        return len(self.ids)
