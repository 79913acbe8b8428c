"""The verb handlers; importing this package registers every verb (query.registry)."""

from collector.query.verbs import admin, counts, events, session, streaming

__all__ = ["admin", "counts", "events", "session", "streaming"]
