"""Typed messages between the workflow and its activities (the Temporal boundary).

Claim check: these carry object-store keys and small numbers, never audio or tokens, so
every payload stays far below Temporal's limits. Import-light: the workflow sandbox loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from temporalio.common import SearchAttributeKey

from longsong.plan import Plan, Segment
from longsong.request import Sampling, SongRequest
from longsong.settings import Settings

# Custom search attributes shown in the Temporal Web UI, and their types for `temporal ... --search-attribute`.
STAGE = SearchAttributeKey.for_keyword("LongsongStage")
PROGRESS = SearchAttributeKey.for_int("LongsongProgress")
USER = SearchAttributeKey.for_keyword("LongsongUserId")
ENGINE = SearchAttributeKey.for_keyword("LongsongEngine")
SEARCH_ATTRIBUTES = {STAGE.name: "Keyword", PROGRESS.name: "Int", USER.name: "Keyword", ENGINE.name: "Keyword"}

# Class names of core errors no retry can fix: activities raise them as non-retryable ApplicationErrors,
# and the workflow's retry policies name them too.
NON_RETRYABLE_ERRORS = ("InvalidRequest", "EngineError", "StorageError", "SilentTrackError", "FfmpegMissing")


def scratch_prefix(request_id: str) -> str:
    return f"work/{request_id}/"


def segment_key(request_id: str, index: int, kind: str) -> str:
    """Scratch key of a window's `npy` audio, `state` (hand-off) or `json` record."""
    return f"{scratch_prefix(request_id)}seg-{index:03d}.{kind}"


def attempt_key(key: str, attempt: int) -> str:
    """`work/r/seg-003.npy` -> `work/r/seg-003.a2.npy`: each attempt writes its own objects, so a retried or
    zombie attempt never overwrites a window that a later window already continued from."""
    stem, dot, kind = key.rpartition(".")
    return f"{stem}.a{attempt}.{kind}"


def track_prefix(user_id: str, request_id: str) -> str:
    return f"audio/{user_id}/{request_id}/"


@dataclass
class SegmentJob:
    request_id: str
    engine: str
    model: str | None
    segment: Segment
    total_segments: int
    sampling: Sampling
    handoff_key: str | None  # previous segment's hand-off state; None for segment 0
    audio_key: str  # where the window's decoded audio goes (with write_once: per attempt, see attempt_key)
    state_key: str  # where this window's hand-off state goes
    record_key: str  # where the SegmentRecord goes
    write_once: bool = False  # each attempt writes under its own keys (songs started before this was False)
    model_version: str | None = None  # the revision every window of the song must use (pinned after window 0)


@dataclass
class SegmentOutcome:
    index: int
    audio_key: str
    state_key: str
    sample_rate: int
    channels: int
    n_samples: int
    engine: str
    model: str
    model_version: str
    generate_s: float
    worker: str
    attempt: int
    details: dict[str, str] = field(default_factory=dict)  # engine-specific facts for metadata
    record_key: str = ""  # where its SegmentRecord is ("" from workers before write-once keys: segment_key's)


@dataclass
class SegmentRecord:
    """What a window was made from and what came out, stored beside its audio (claim check):
    a whole plan's texts and engine details outgrow a 64 KB payload on long songs."""

    segment: Segment
    outcome: SegmentOutcome

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SegmentRecord":
        d = json.loads(data)
        return cls(Segment(**d["segment"]), SegmentOutcome(**d["outcome"]))


@dataclass
class SeamReport:
    index: int  # seam between segment index-1 and index
    start_s: float  # where the crossfade starts on the track
    correlation: float
    law: str  # "linear" (amplitude-complementary) ... "equal-power"
    length_s: float = 0.0  # crossfade length (follows the tempo when placed on a beat)
    placement: str = "centre"  # "downbeat", "beat" (found in the overlap) or "centre" (no beat found)
    level_step_db: float = 0.0  # short-term level just after minus just before the seam
    flux_z: float = 0.0  # spectral flux at the seam, z-score against the whole track's


@dataclass
class FinishJob:
    """Everything the CPU stage needs, by key where it grows with the song: each window's
    SegmentRecord (its segment of the plan and its outcome) is read from the store."""

    request: SongRequest
    seed: int
    plan: Plan  # without segments: they come back from the records
    records: list[str]  # SegmentRecord keys, in plan order
    watermark_id: int
    started_at: str  # ISO time the workflow started
    stage_timings: dict[str, float]


@dataclass
class StoredFile:
    key: str
    size: int
    sha256: str
    content_type: str


@dataclass
class Mastered:
    sample_rate: int
    channels: int
    n_samples: int
    loudness_before_lufs: float
    loudness_lufs: float
    true_peak_dbtp: float
    limiter_gain_reduction_db: float
    seams: list[SeamReport]
    encoded_true_peak_dbtp: dict[str, float]  # per lossy format, measured on the decoded file


@dataclass
class FinishOutcome:
    prefix: str
    files: dict[str, StoredFile]  # "mp3"/"wav"/... plus "metadata" and "waveform"
    mastered: Mastered
    timings: dict[str, float]  # per step, plus "wall_s" (encodes overlap, so not their sum)
    worker: str


@dataclass
class Timing:
    """Activity heartbeat timeout and retry intervals, from the settings of the client that starts the
    song (the workflow may not read the environment). Defaults keep recorded histories' values."""

    heartbeat_timeout_s: float = Settings.heartbeat_timeout_s
    retry_initial_s: float = Settings.retry_initial_s
    retry_max_s: float = Settings.retry_max_s

    @classmethod
    def of(cls, settings: Settings) -> "Timing":
        return cls(settings.heartbeat_timeout_s, settings.retry_initial_s, settings.retry_max_s)


@dataclass
class SongJob:
    """The workflow's input: the request plus where and how its activities run (config, not request)."""

    request: SongRequest
    gpu_queue: str
    cpu_queue: str
    timing: Timing = field(default_factory=Timing)


@dataclass
class Progress:
    """As of `updated_at` (workflow time); the client ages elapsed/ETA to its own clock."""

    stage: str  # queued, generating, finishing, done, failed, cancelled
    segments_done: int
    segments_total: int
    elapsed_s: float
    eta_s: float | None
    percent: int
    started_at: str
    updated_at: str
    # Merged in by the client from the workflow's pending activity (the workflow itself leaves them unset):
    activity: str | None = None  # running activity: generate_segment, finish_song, cleanup_scratch, ...
    window: int | None = None  # 1-based window of a generate_segment activity
    attempt: int | None = None
    max_attempts: int | None = None  # None: unlimited
    last_failure: str | None = None  # one line
    heartbeat_age_s: float | None = None  # since the running attempt's last heartbeat (or start)
    retrying: bool = False  # attempt > 1 or a last failure: no ETA
    stalled: bool = False  # no heartbeat for a while (its worker may be gone): no ETA


@dataclass
class SongResult:
    request_id: str
    user_id: str
    status: str
    duration_s: float
    seed: int
    engine: str
    model: str
    loudness_lufs: float
    true_peak_dbtp: float
    watermark_id: int
    files: dict[str, str]  # format (and "metadata", "waveform") -> object key
    timings: dict[str, float]
