"""Process life: event ids unique per process, trackers (their queues) reset in a forked
child and closed when the interpreter exits (or a multiprocessing child ends)."""

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


class LiveQueue(Protocol):
    """What a tracker's queue does at a fork and at exit (see `EventQueue`)."""

    def after_fork_in_child(self) -> None: ...

    def close_at_exit(self) -> None:
        """Close the tracker, unless it is closed already."""


_live_queues: weakref.WeakSet[LiveQueue] = weakref.WeakSet()


def register(queue: LiveQueue) -> None:
    _live_queues.add(queue)


def _after_fork_in_child() -> None:
    ids.renew()
    for queue in list(_live_queues):
        queue.after_fork_in_child()
    _close_at_multiprocessing_exit()


def _close_all_at_exit() -> None:
    for queue in list(_live_queues):
        queue.close_at_exit()


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
