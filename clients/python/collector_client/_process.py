"""Process life: event ids unique per process, trackers reset in a forked child and closed
when the interpreter exits (or a multiprocessing child ends)."""

from __future__ import annotations

import atexit
import base64
import itertools
import os
import sys
import weakref
from typing import Protocol


class EventIds:
    """Event ids: a random prefix drawn once per process and a counter.

    Unique without a system call per event, and increasing within a process, which is kind
    to the daemon's unique index. A forked child draws its own prefix (`renew`), or it would
    repeat its parent's ids and the daemon would take the child's events for duplicates.
    """

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = base64.urlsafe_b64encode(os.urandom(12)).decode("ascii") + "."
        self.counter = itertools.count(1)


ids = EventIds()


class LiveTracker(Protocol):
    _closed: bool

    def _after_fork_in_child(self) -> None: ...

    def _close_at_exit(self) -> None: ...


_live_trackers: weakref.WeakSet[LiveTracker] = weakref.WeakSet()


def register(tracker: LiveTracker) -> None:
    _live_trackers.add(tracker)


def _after_fork_in_child() -> None:
    ids.renew()
    for tracker in list(_live_trackers):
        tracker._after_fork_in_child()
    _close_at_multiprocessing_exit()


def _close_all_at_exit() -> None:
    for tracker in list(_live_trackers):
        if not tracker._closed:
            tracker._close_at_exit()


class _ExitHook:
    """Something for multiprocessing to hold a weak reference to."""


_exit_hook = _ExitHook()


def _close_at_multiprocessing_exit() -> None:
    """A child of multiprocessing's fork start method ends with os._exit(), which skips
    atexit; multiprocessing's own exit hooks still run, so the trackers are closed by one.

    multiprocessing forgets the exit hooks (finalizers) of its parent right after the fork,
    then runs its after-fork callbacks: the callback registered here adds the hook.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(
            _exit_hook,
            lambda hook: util.Finalize(hook, _close_all_at_exit, exitpriority=10),
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
