"""What the quality gate decides on: thresholds in, one `Measure` per analyzer out. Import-light."""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, SKIPPED = "pass", "fail", "n/a"


@dataclass(frozen=True)
class Thresholds:
    """Gate limits (LONGSONG_GATE_* settings). A measure fails when its value passes its limit."""

    tempo_tolerance_pct: float = 4.0  # |bpm - requested| (and vs the song so far), percent
    beat_phase_tolerance: float = 0.25  # beat-grid offset against the song so far, fraction of a beat
    key_min_correlation: float = 0.5  # key-profile correlation with the requested key / the song's key
    loudness_drift_db: float = 6.0  # short-term loudness of the new part vs the song's running median
    silence_lufs: float = -45.0  # the new part's loudest short-term loudness under this: silence
    collapse_ratio: float = 0.35  # tonal (or spectral) content fallen to this share of the song's
    loop_similarity: float = 0.97  # the new part repeats one short stretch of itself this closely
    copy_similarity: float = 0.97  # ... or copies earlier material this closely
    clip_fraction: float = 0.001  # share of samples at or over full scale
    dc_offset: float = 0.02  # |mean| of any channel


@dataclass(frozen=True)
class Expectation:
    """What the request asked for (None: not asked, only agreement with the song so far counts)."""

    bpm: float | None = None
    key: str | None = None  # canonical, e.g. "A minor" (longsong.request.normalize_key)


@dataclass
class Measure:
    name: str  # tempo, beat_phase, key, loudness, silence, collapse, loop, copy, clipping, nan, dc
    value: float  # the measured figure, in the unit of `limit`
    limit: float
    score: float  # 1: perfect, 0.5: at the limit, 0: far beyond it (the best of failed attempts is kept)
    verdict: str  # PASS, FAIL or SKIPPED (nothing to compare with, e.g. no bpm asked on window 0)
    note: str  # one line for people, e.g. "131.2 bpm, asked 120, song so far 120.1"


@dataclass
class WindowReport:
    measures: list[Measure]
    facts: dict[str, float | str] = field(default_factory=dict)  # bpm, key, lufs, ... of the new part

    @property
    def passed(self) -> bool:
        return all(m.verdict != FAIL for m in self.measures)

    @property
    def score(self) -> float:
        return min((m.score for m in self.measures if m.verdict != SKIPPED), default=1.0)

    @property
    def failed(self) -> list[str]:
        return [m.name for m in self.measures if m.verdict == FAIL]
