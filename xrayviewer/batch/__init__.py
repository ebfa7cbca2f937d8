"""Folder/list analysis with progress, cancel, per-file error isolation and crash-safe resume."""

from .engine import BatchItem, BatchOptions, BatchProgress, BatchRunner, BatchSummary, Discovery, discover
from .journal import Journal

__all__ = ["BatchItem", "BatchOptions", "BatchProgress", "BatchRunner", "BatchSummary", "Discovery", "Journal",
           "discover"]
