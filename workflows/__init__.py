"""Temporal workflows (deterministic, sandboxed: import nothing heavy here)."""

from longsong.workflows.song import SongWorkflow

__all__ = ["SongWorkflow"]
