"""Errors a query command can end with; each becomes one `ERR <CLASS> <message>` line."""

from __future__ import annotations

ERROR_CLASSES = ("SYNTAX", "ARG", "UNKNOWN", "LIMIT", "AUTH", "TIMEOUT", "BUSY", "INTERNAL")


class QueryError(Exception):
    """A command that cannot be answered: its class (one of ERROR_CLASSES) and why."""

    def __init__(self, error_class: str, message: str) -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown error class {error_class!r}")
        super().__init__(message)
        self.error_class = error_class
        self.message = message

    def status_line(self) -> str:
        one_line = " ".join(self.message.split())
        return f"ERR {self.error_class} {one_line}"
