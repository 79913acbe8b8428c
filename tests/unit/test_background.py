"""When the writer runs background work between commits: a fifth of its time while the
index backlog is short, half of it once the backlog is long."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.settings import WriterSettings
from collector.storage.background import INDEX_BACKLOG_ROWS, Background
from collector.storage.catalog import Catalog, PartitionState
from collector.storage.indexer import index_backlog
from collector.storage.layout import day_partition


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def transaction(self, plan: Any) -> Any:
        raise AssertionError("no step is run in these tests")


def catalog_with_backlog(rows: int) -> Catalog:
    catalog = Catalog()
    for day, share in ((20000, rows // 2), (20001, rows - rows // 2)):
        state = PartitionState(day_partition(day), indexed_through=10_000_000 * (day - 19999))
        state.add(share, 0, 1, state.indexed_through + 1, state.indexed_through + share)
        catalog.live[state.partition.name] = state
    return catalog


def background(rows: int, clock: Clock) -> Background:
    settings = WriterSettings(Path("unused.db"), 1000, 0.1, "normal", 0.0, 0, 1)
    bg = Background(Owner(catalog_with_backlog(rows)), settings, clock)
    bg.retention_due_at = clock.now + 3600  # only the index is pending
    bg.last_step_end, bg.last_step_seconds = clock.now, 0.25
    return bg


def test_backlog_counts_every_partition() -> None:
    assert index_backlog(catalog_with_backlog(1234)) == 1234


def test_a_short_backlog_waits_for_four_steps_of_commits() -> None:
    clock = Clock()
    bg = background(INDEX_BACKLOG_ROWS, clock)
    clock.now += 0.875
    assert not bg.due_between_commits()
    clock.now += 0.125
    assert bg.due_between_commits()


def test_a_long_backlog_gets_half_the_writer() -> None:
    clock = Clock()
    bg = background(INDEX_BACKLOG_ROWS + 1, clock)
    clock.now += 0.125
    assert not bg.due_between_commits()
    clock.now += 0.125
    assert bg.due_between_commits()
