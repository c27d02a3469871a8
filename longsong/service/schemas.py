"""The HTTP API's JSON shapes, as pydantic models: the OpenAPI schema (the contract other languages code
against) is generated from them.

Request bodies are documented by these models but checked by `longsong.request.validate` (through
`longsong.service.intake`), so the API answers the same one-line messages as the CLI; a test holds `SongIn`'s
fields equal to the request's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SectionIn(Strict):
    start_s: float = Field(description="seconds from the start (the first section starts at 0)")
    prompt: str = Field(description="section text, 1-500 characters")


class SongIn(Strict):
    """A song request; `user_id` is the API key's user."""

    prompt: str = Field(description="what the song is, 1-2000 characters")
    duration_s: float = Field(180.0, description="30-600")
    genre: str | None = None
    bpm: int | None = Field(None, description="40-240")
    key: str | None = Field(None, description="e.g. 'A minor', 'F# major'")
    mood: str | None = None
    sections: list[SectionIn] = Field(default_factory=list, description="at most 32, ascending start_s")
    seed: int | None = Field(None, description="0 to 2^63-1; unset: chosen by the workflow")
    engine: Literal["procedural", "musicgen"] = "procedural"
    model: str | None = Field(None, description="MusicGen model (hub id) served by the GPU workers")
    segment_s: float = Field(30.0, description="window length, 10-30")
    overlap_s: float = Field(12.0, description="context carried into the next window, 1 to segment_s-5")
    crossfade_s: float = Field(2.0, description="0.1 to overlap_s")
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg: float = 3.0
    formats: list[Literal["wav", "flac", "mp3", "opus"]] = Field(default_factory=lambda: ["mp3", "wav"])
    loudness_lufs: float = Field(-14.0, description="-40 to -5")
    true_peak_dbtp: float = Field(-1.0, description="-9 to 0")
    request_id: str | None = Field(None, description="[A-Za-z0-9_-]{1,64}: the song's id; the same request "
                                                     "again returns the same song (or send Idempotency-Key)")
    max_rerolls: int = Field(2, description="quality gate: re-rolls of a failing window, 0-5 (0: no gate)")
    outro: bool | None = None
    callback_url: str | None = Field(None, description="https URL POSTed a signed event when the song ends")


class ExtendIn(Strict):
    duration_s: float = Field(description="seconds added after the continuation point")
    from_s: float | None = Field(None, description="continue from the last window end at or before this time")
    sections: list[SectionIn] | None = Field(None, description="times from the continuation point")
    outro: bool = False
    seed: int | None = None
    request_id: str | None = None
    max_rerolls: int | None = None


class RegenerateIn(Strict):
    from_window: int = Field(description="first window made anew (0-based)")
    seed: int | None = None
    sections: list[SectionIn] | None = Field(None, description="of the whole song (default: the parent's)")
    request_id: str | None = None
    max_rerolls: int | None = None


class FieldError(BaseModel):
    field: str | None
    message: str


class ErrorOut(BaseModel):
    error: str = Field(description="one line")
    field: str | None = None
    errors: list[FieldError] = Field(default_factory=list, description="422: one message per field")
    fields: list[str] = Field(default_factory=list, description="409: the fields that differ")


class ProgressOut(BaseModel):
    stage: str = Field(description="queued, generating, finishing, done, failed, cancelled")
    windows_done: int
    windows_total: int
    percent: int
    elapsed_s: float
    eta_s: float | None
    retrying: bool = False
    stalled: bool = False
    attempt: int | None = None
    last_failure: str | None = None
    rerolls: int = 0


class SectionOut(BaseModel):
    start_s: float
    prompt: str


class ResultOut(BaseModel):
    duration_s: float
    loudness_lufs: float
    true_peak_dbtp: float
    quality: str
    watermark_id: int
    seed: int
    engine: str
    model: str
    parent_id: str | None = None
    sections: list[SectionOut] = Field(default_factory=list)
    seams: list[float] = Field(default_factory=list, description="seam centres, seconds")


class SongOut(BaseModel):
    id: str
    status: str = Field(description="running, completed, failed, canceled, terminated, timed_out")
    prompt: str
    duration_s: float = Field(description="requested")
    engine: str
    created_at: datetime | None
    progress: ProgressOut
    result: ResultOut | None = None
    error: str | None = None
    files: dict[str, str] = Field(default_factory=dict, description="name -> API path ({} until completed)")
    links: dict[str, str]


class SongSummaryOut(BaseModel):
    id: str
    status: str
    prompt: str
    duration_s: float
    created_at: datetime


class SongListOut(BaseModel):
    songs: list[SongSummaryOut]
    next_cursor: str | None


class QuotaOut(BaseModel):
    concurrent: int
    daily_minutes: float
    monthly_minutes: float
    rate_per_s: float
    burst: int


class MeOut(BaseModel):
    user_id: str
    key_id: str
    key_name: str
    quota: QuotaOut
    usage: dict[str, float]


class CancelOut(BaseModel):
    id: str
    status: Literal["cancelling"]
