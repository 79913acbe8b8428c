"""The SQLite backend: read-only connections, SQL building, the rollups."""
