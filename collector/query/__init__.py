"""The query side: a line protocol on the query port, read-only access to the database."""
