"""Local history of analyses (SQLite in the user data folder)."""

from .db import History, HistoryEntry, default_history_path

__all__ = ["History", "HistoryEntry", "default_history_path"]
