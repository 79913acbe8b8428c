"""Events into a tracker's queue: track(), the hot path, the queue's lock, and the sections
in which the queue or its counters change, safe against signal handlers.

Python runs a signal handler between two bytecodes of the thread it interrupts, which may be
inside the queue's lock, halfway through changing the queue. Code that changes the queue or
the counters therefore runs in a *section* (`track()`'s own, or `with intake.section`),
which marks the queue `_busy`. A track() that finds it busy can only be a handler
interrupting that same thread (the lock is reentrant for it, and for it alone): its event
waits, packed, in `_deferred` (a deque: appending is atomic) and the interrupted section
takes it in before it ends. Only track() may be called from a signal handler.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from collector_client._chunks import SEALED, WAS_IDLE, Chunks
from collector_client._process import ids
from collector_client._reports import Reports
from collector_client._settings import (
    SENT_AT_VALUE_BYTES,
    Counters,
    ErrorHandler,
    Settings,
    TrackerError,
    event_budget,
    refusal,
)

if TYPE_CHECKING:
    from collector_client._queue import TrackerHooks

REFUSED = 4  # what a section tells the code that leaves it, with WAS_IDLE and SEALED


class Section:
    """`with intake.section:` holds the queue's lock for code that changes the queue or the
    counters; events that a signal handler tracks meanwhile are taken in as it ends."""

    __slots__ = ("intake",)

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def __enter__(self) -> None:
        intake = self.intake
        intake.lock.acquire()
        if intake._busy:  # a handler called more than track(): unsupported, but no deadlock
            intake._nested += 1
        else:
            intake._busy = True

    def __exit__(self, *exc_info: object) -> None:
        intake = self.intake
        if intake._nested:
            intake._nested -= 1
            intake.lock.release()
            return
        signal = 0
        try:
            signal = intake._end_section()
        finally:
            intake.lock.release()
        if signal:
            intake._after_deferred(signal)


class Intake:
    """Takes packed events into `chunks` and counts them in `counters`; tells the tracker
    (`hooks`) when the sender must hear of them, and `reports` the events it refuses.

    `lock` and `section` are the queue's: whatever changes `chunks` or `counters` holds them.
    """

    def __init__(
        self,
        settings: Settings,
        chunks: Chunks,
        counters: Counters,
        hooks: TrackerHooks,
        on_error: ErrorHandler | None,
    ) -> None:
        self.settings = settings
        self._clock = settings.clock
        self.chunks = chunks
        self.counters = counters
        self.hooks = hooks
        self.max_event_bytes = event_budget(settings)
        # A sealed chunk is sent by the thread that sealed it (see the senders' assist()).
        self.caller_sends = settings.caller_sends
        # Reentrant for a signal handler's track() only: see the module's docstring.
        self.lock = threading.RLock()
        self.section = Section(self)
        self.reports = Reports(on_error, self.section)
        self._busy = False
        self._nested = 0
        self._deferred: deque[bytes | TrackerError] = deque()
        self._refusals: list[TrackerError] = []
        # Used in sections only: a Packer is not thread-safe, and one per call costs more
        # than the packing. An aware datetime (as ts or in extra) goes out as a Timestamp.
        self._pack = msgpack.Packer(datetime=True).pack

    def track(self, action: str, user_id: Any, value: Any, extra: Any, ts: Any, id: Any, /) -> None:  # noqa: PLR0917
        """EventQueue.track, typed there: build the event, count it and queue it packed, or
        drop it; then wake or assist the sender, or report the refusal. In one piece, as
        the trackers call it directly: this is the hot path."""
        if type(action) is not str:
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        event = {
            "action": action,
            "ts": self._clock() if ts is None else ts,
            "id": f"{ids.prefix}{next(ids.counter)}" if id is None else id,
        }
        if user_id is not None:
            event["user_id"] = user_id
        if value is not None:
            event["value"] = value
        if extra is not None:
            event["extra"] = extra
        event["sent_at"] = 0.0  # last: the sender writes the send time over its value
        with self.lock:
            if self._busy:  # a signal handler that interrupted this thread in a section
                self._defer(event)
                return
            self._busy = True
            signal = 0
            try:
                self.counters.queued += 1
                try:
                    data = self._pack(event)[:-SENT_AT_VALUE_BYTES]
                except Exception:  # whatever the app put in it costs this event only
                    data = b""
                size = len(data) + SENT_AT_VALUE_BYTES
                if data and size <= self.max_event_bytes:
                    signal = self.chunks.add(data, size)
                else:
                    signal = self._refuse(refusal(event, size, self.settings))
            finally:  # as _end_section(), quicker when no handler ran: the usual case
                if self._deferred:
                    signal |= self._end_section()
                else:
                    self._busy = False
                    if self._deferred:  # a handler just ran, with _busy still set
                        self._busy = True
                        signal |= self._end_section()
        if signal:
            self._after_track(signal)

    def _refuse(self, error: TrackerError) -> int:
        """Drop an event that cannot go (in a section); its error is reported once the
        section ends."""
        self.counters.dropped += 1
        self._refusals.append(error)
        return REFUSED

    def _after_track(self, signal: int) -> None:
        if signal & REFUSED:
            self._report_refusals()
        if signal & SEALED and self.caller_sends:
            self.hooks.assist()
            signal &= ~SEALED
        if signal & (WAS_IDLE | SEALED):
            self.hooks.wake()

    def _defer(self, event: dict[str, Any]) -> None:
        """track() in a signal handler while its thread is in a section: nothing of the queue
        may change now. A Packer of its own, since the section may be packing."""
        try:
            data = msgpack.Packer(datetime=True).pack(event)[:-SENT_AT_VALUE_BYTES]
        except Exception:
            data = b""
        size = len(data) + SENT_AT_VALUE_BYTES
        ok = data and size <= self.max_event_bytes
        self._deferred.append(data if ok else refusal(event, size, self.settings))

    def _end_section(self) -> int:
        """Take in the deferred events and leave the section (lock held); return the signal.
        A handler that runs once `_busy` is cleared tracks as usual: nothing is left half
        done, and the lock is reentrant."""
        signal = 0
        while True:
            while self._deferred:
                item = self._deferred.popleft()
                self.counters.queued += 1
                if isinstance(item, TrackerError):
                    signal |= self._refuse(item)
                else:
                    signal |= self.chunks.add(item, len(item) + SENT_AT_VALUE_BYTES)
            self._busy = False
            if not self._deferred:
                return signal
            self._busy = True

    def _after_deferred(self, signal: int) -> None:
        """A section other than track()'s took in events a signal handler tracked."""
        if signal & REFUSED:
            self._report_refusals()
        if signal & (WAS_IDLE | SEALED):
            self.hooks.wake_soon()

    def _report_refusals(self) -> None:
        with self.lock:
            refusals, self._refusals = self._refusals, []
        for error in refusals:
            self.reports.report(error)
