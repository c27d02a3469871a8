"""Typed messages between the workflow and its activities (the Temporal boundary).

Claim check: these carry object-store keys and small numbers, never audio or tokens, so
every payload stays far below Temporal's limits. Import-light: the workflow sandbox loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from temporalio.common import SearchAttributeKey

from longsong.analysis.report import Measure
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
NON_RETRYABLE_ERRORS = ("InvalidRequest", "EngineError", "StorageError", "SilentTrackError", "GainLimitError",
                        "FfmpegMissing")


def scratch_prefix(request_id: str) -> str:
    return f"work/{request_id}/"


def segment_key(request_id: str, index: int, kind: str, reroll: int = 0) -> str:
    """Scratch key of a window's `npy` audio, `state` (hand-off), `json` record, `features` or `quality`
    report; a re-roll has its own (`seg-003.r1.npy`)."""
    return f"{scratch_prefix(request_id)}seg-{index:03d}{f'.r{reroll}' if reroll else ''}.{kind}"


def window_key(track: str, index: int, kind: str) -> str:
    """Where a finished song keeps window `index`'s audio, hand-off state, record, features and quality report
    (`audio/u/r/windows/seg-003.state`): a later song extends or redoes it from there."""
    return f"{track}windows/seg-{index:03d}.{kind}"


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
    reroll: int = 0  # the quality gate's re-roll (its seed is already derived into segment.seed)
    context_audio_key: str | None = None  # the previous window's audio: its context part is reused, not decoded


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
    reroll: int = 0  # the quality gate's re-roll this attempt belongs to


@dataclass
class AnalyzeJob:
    """Judge one generated window (its new part) against the song so far: CPU task queue."""

    request_id: str
    index: int
    reroll: int
    audio_key: str  # the window's audio (context included; the activity cuts it off)
    context_frames: int
    new_start_s: float  # track time where the window's new part starts
    sample_rate: int
    bpm: float | None  # what the request asked for
    key: str | None
    history: list[str]  # features keys of the song's kept earlier windows, in order
    features_key: str  # where this window's features go
    report_key: str  # where its full report (every measure) goes


@dataclass
class WindowVerdict:
    """What the workflow decides on (the full report stays in the store under report_key)."""

    index: int
    reroll: int
    passed: bool
    score: float
    failed: list[str]  # names of the failing measures
    note: str  # the failing measures' notes, one line ("" when passed)
    features_key: str
    report_key: str
    analyze_s: float
    measures: list[Measure] = field(default_factory=list)


@dataclass
class WindowQuality:
    """One window's gate outcome, in the progress query and the result."""

    index: int
    rerolls: int  # re-rolls made (0: the first try was kept or the gate is off)
    kept: int  # which attempt (re-roll number) the song uses
    passed: bool  # False: every attempt failed, the best-scoring one is kept and the song flagged
    score: float
    failed: list[str]
    inherited: bool = False  # reused from the parent song as it is


@dataclass
class ParentJob:
    """Load the kept windows of the song this one extends or redoes (checked again at start)."""

    user_id: str
    parent_id: str
    keep: int  # windows 0..keep-1 are reused


@dataclass
class ParentWindows:
    segments: list[Segment]  # the parent's plan segments of the kept windows
    records: list[str]  # their SegmentRecord keys in the parent's track folder
    states: list[str]  # their hand-off state keys
    features: list[str]  # their features keys ("" where the parent stored none)
    reports: list[str]  # their quality report keys ("" where none)
    quality: list[WindowQuality]  # as the parent judged them
    model: str  # the parent's model and revision: the new windows must use the same
    model_version: str


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
class Lineage:
    request_id: str  # the parent song
    kept_windows: int  # its windows 0..kept_windows-1 are reused as they are
    from_s: float  # where the new music starts (the end of the last kept window)


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
    quality: list[WindowQuality] = field(default_factory=list)  # per window, in plan order ([]: gate off)
    features: list[str] = field(default_factory=list)  # kept windows' features keys ("" where none)
    reports: list[str] = field(default_factory=list)  # kept windows' report keys ("" where none)
    rejected: list[list[str]] = field(default_factory=list)  # per window, reports of the attempts not kept
    parent: Lineage | None = None  # the song this one extends or redoes
    max_rerolls: int = 0


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
    encoded_true_peak_dbtp: dict[str, float]  # per format (lossy only in older songs), decoded
    encoded_loudness_lufs: dict[str, float] = field(default_factory=dict)  # per format, decoded, as played
    encoded_margin_db: dict[str, float] = field(default_factory=dict)  # each format limited this far under the ceiling


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
    key_id: str | None = None  # the API key that submitted it: its webhook secret signs the callback


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
    windows: list[WindowQuality] = field(default_factory=list)  # the gate's verdicts so far
    rerolls: int = 0  # re-rolls made so far, all windows


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
    quality: str = "off"  # "passed", "flagged" (some window failed every attempt) or "off" (no gate)
    windows: list[WindowQuality] = field(default_factory=list)
    parent_id: str | None = None
