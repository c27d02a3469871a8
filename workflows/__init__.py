"""Temporal workflows (deterministic, sandboxed: import nothing heavy here)."""

from workflows.song import SongWorkflow

__all__ = ["SongWorkflow"]
