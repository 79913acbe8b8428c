"""Clients of collector: the query client (and, later, the tracking library)."""
