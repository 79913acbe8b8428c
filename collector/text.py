"""Text from the outside world made safe to log or store as a reason."""

from __future__ import annotations

MAX_REASON_CHARS = 300


def sanitise(text: str) -> str:
    """One printable line of bounded length, for logs and quarantine reasons."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:MAX_REASON_CHARS])
    return clean + ("..." if len(text) > MAX_REASON_CHARS else "")
