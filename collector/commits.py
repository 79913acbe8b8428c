"""The signal from the writer to whoever waits for newly committed rows (TAIL readers)."""

from __future__ import annotations

import asyncio


class CommitSignal:
    """Wakes every listener after a commit that stored rows."""

    def __init__(self) -> None:
        self.listeners: set[asyncio.Event] = set()

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self.listeners.add(event)
        return event

    def forget(self, event: asyncio.Event) -> None:
        self.listeners.discard(event)

    def notify(self) -> None:
        for event in self.listeners:
            event.set()
