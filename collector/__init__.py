"""collector: a fast, dependable event collector (msgpack over UDP and TCP into SQLite)."""

__version__ = "0.1.0"
