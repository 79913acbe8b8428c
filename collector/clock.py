"""Wall-clock time as the daemon stores it: integer milliseconds since the Unix epoch, UTC."""

from __future__ import annotations

import time

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000
