"""Stores that answer the query language: SQLite (the embedded default)."""
