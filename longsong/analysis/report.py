"""What the quality gate decides on: thresholds in, one `Measure` per analyzer out. Import-light."""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, SKIPPED = "pass", "fail", "n/a"


def _limit(default: float, doc: str) -> float:
    """A threshold field; `doc` is its line in the README's configuration table (LONGSONG_GATE_<NAME>)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Thresholds:
    """Gate limits (LONGSONG_GATE_* settings). A measure fails when its value passes its limit.
    Defaults: set on procedural songs with the defects of longsong/engines/faults.py injected, checked on
    recorded loops and sampled-instrument renders (benchmarks/analysis_accuracy.py); rules in analysis/gate.py."""

    tempo_tolerance_pct: float = _limit(4.0, "|bpm - requested| (and vs the song so far), percent, after octave folding")
    pulse_min: float = _limit(0.1, "onset-autocorrelation pulse strength under this: no steady beat, tempo not judged")
    pulse_lost: float = _limit(0.3, "a part with no steady pulse fails tempo where the song's median pulse is this strong")
    beat_phase_tolerance: float = _limit(0.25, "beat-grid offset against the song so far, fraction of a beat")
    beat_pattern_min: float = _limit(0.75, "folded onset patterns correlating less (a new drum part): phase not judged")
    beat_ambiguity: float = _limit(0.8, "on the grid when its pattern correlation is this share of the best shift's")
    key_min_correlation: float = _limit(0.5, "key-profile correlation (or its relative's) with the asked or the song's key")
    relative_key_score: float = _limit(0.7, "score cap when the part's own key is the reference's relative (A min / C maj)")
    loudness_drift_db: float = _limit(6.0, "median short-term loudness of the new part under the song's running median")
    loudness_rise_db: float = _limit(9.0, "... or over it (a quiet intro before the band comes in is not a fault)")
    silence_lufs: float = _limit(-45.0, "momentary loudness (400 ms) under this is silence")
    dropout_s: float = _limit(2.0, "longest silent stretch allowed inside the new part")
    tail_silence_s: float = _limit(8.0, "... at its end (an outro may ring out): counts dropout_s / tail_silence_s per s")
    collapse_ratio: float = _limit(0.8, "tonal content (spectral-peak energy share) fallen under this share of the song's")
    collapse_floor: float = _limit(0.45, "... and either under this share of the part's energy (arrangement changes stay over)")
    collapse_flatness: float = _limit(0.05, "... or its spectral flatness over 1 / this times the song's (drumless songs)")
    loop_similarity: float = _limit(0.97, "the new part repeats one short stretch of itself this closely ...")
    loop_span_s: float = _limit(6.0, "... for this long (or the whole part, when shorter)")
    copy_similarity: float = _limit(0.98, "the new part copies earlier material this closely ...")
    copy_span_s: float = _limit(8.0, "... for this long")
    short_part_s: float = _limit(6.0, "a new part shorter than this gets no tempo, beat, key, loop or copy verdict")
    clip_fraction: float = _limit(0.001, "share of samples at or over full scale")
    dc_offset: float = _limit(0.02, "|mean| of any channel")


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
