"""The names of longsong's worker metrics, their histogram buckets, and the song metrics the workflow records.

Worker metrics go through the Temporal runtime's meter, so they share the worker's one Prometheus endpoint
(longsong.telemetry.runtime) with the SDK's own metrics; the meter adds namespace, task_queue and
workflow_type or activity_type to every series. Counters are exported with a `_total` suffix.
Import-light (temporalio only): the workflow sandbox loads this module.
"""

from __future__ import annotations

from temporalio import workflow

SONGS_STARTED = "longsong_songs_started"  # {engine}
SONGS_CLOSED = "longsong_songs_closed"  # {engine, outcome}
SONG_LATENCY = "longsong_song_latency"  # seconds from start to close {engine, outcome}
SONG_AUDIO = "longsong_song_audio"  # seconds of audio delivered {engine}
WINDOW_SECONDS = "longsong_window_seconds"  # generation wall time of one window {engine, model}
WINDOW_RTF = "longsong_window_rtf"  # wall time / seconds of the window's new audio {engine, model}
ACTIVITY_ERRORS = "longsong_activity_errors"  # activity attempts that raised {error_type}
OUTCOMES = ("completed", "failed", "cancelled")

# The exporter's default buckets end at 10 (s): songs take minutes, and a window's RTF lives around 1.
BUCKETS: dict[str, list[float]] = {
    SONG_LATENCY: [10, 30, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 3600],
    WINDOW_SECONDS: [0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30, 45, 60, 90, 120, 300],
    WINDOW_RTF: [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.25, 1.5, 2, 3, 5, 10],
    # the SDK's own latencies (durations in seconds): a backlog on the GPU queue waits minutes
    "activity_schedule_to_start_latency": [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
    "workflow_task_schedule_to_start_latency": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    "activity_execution_latency": [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
}


def song_started(engine: str) -> None:
    """Count a song that starts (not during replay: the workflow meter skips replayed code)."""
    workflow.metric_meter().create_counter(SONGS_STARTED, "songs started").add(1, {"engine": engine})


def song_closed(engine: str, outcome: str, latency_s: float, audio_s: float) -> None:
    """Count a song that ends as `outcome` (completed, failed, cancelled), its latency and its audio."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
    meter = workflow.metric_meter()
    labels = {"engine": engine, "outcome": outcome}
    meter.create_counter(SONGS_CLOSED, "songs closed, by outcome").add(1, labels)
    meter.create_histogram_float(SONG_LATENCY, "song latency from start to close", "s").record(
        max(0.0, latency_s), labels)
    if audio_s > 0:
        meter.create_counter(SONG_AUDIO, "seconds of audio delivered", "s").add(round(audio_s), {"engine": engine})
