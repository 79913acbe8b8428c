"""A tracker's failures: each counted, and handed to the app's on_error, throttled."""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager

from collector_client._settings import ErrorHandler

REPORT_INTERVAL = 1.0  # seconds: on_error hears of one such failure per interval at most
SEND_ERRORS = "send"  # the throttling key of all send and connection errors
MAX_THROTTLE_KEYS = 64


class Reports:
    """Counts failures in `errors` and hands them to `on_error`, whose own exceptions are
    swallowed. The count is taken in `section`, the queue's (a signal handler's track() may
    report too), and on_error is called outside it."""

    def __init__(
        self, on_error: ErrorHandler | None, section: AbstractContextManager[None]
    ) -> None:
        self.on_error = on_error
        self.section = section
        self.errors = 0
        self.last_reports: dict[str, float] = {}

    def report(self, error: Exception, throttle: str | None = None) -> None:
        """Failures of one `throttle` key reach on_error once per REPORT_INTERVAL at most."""
        now = time.monotonic()
        with self.section:
            self.errors += 1
            if throttle is not None:
                if now - self.last_reports.get(throttle, -REPORT_INTERVAL) < REPORT_INTERVAL:
                    return
                if len(self.last_reports) >= MAX_THROTTLE_KEYS:
                    self.last_reports.clear()
                self.last_reports[throttle] = now
        if self.on_error is not None:
            with contextlib.suppress(Exception):  # the app's handler must not stop the sender
                self.on_error(error)

    def send_error(self, error: Exception) -> None:
        """Every send or connection error is counted; on_error hears of one per second at
        most, so that a daemon that is down does not flood the app's logs."""
        self.report(error, SEND_ERRORS)

    def unexpected(self, error: Exception) -> None:
        """A bug met by a sender, which goes on: the same one is reported once a second."""
        self.report(error, f"{type(error).__qualname__}: {error}")
