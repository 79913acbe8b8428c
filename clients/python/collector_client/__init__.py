"""Clients of collector: the tracking library (`Tracker`, `AsyncTracker`) and the query client
(`collector_client.query`)."""

from collector_client._settings import FlushResult, TrackerError, TrackerStats
from collector_client.async_tracker import AsyncTracker
from collector_client.tracker import Tracker

__all__ = ["AsyncTracker", "FlushResult", "Tracker", "TrackerError", "TrackerStats"]
