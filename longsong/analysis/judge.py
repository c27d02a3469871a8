"""Turning a measured figure into a `Measure`: one score curve for every analyzer, so scores compare.

score 1 at the ideal value, 0.5 exactly at the limit, falling towards 0 beyond it (1 / (1 + x^2) with x
the distance from the ideal in units of the limit's distance), so the gate can keep the best of failed
attempts by score alone."""

from __future__ import annotations

import math

from longsong.analysis.report import FAIL, PASS, SKIPPED, Measure


def curve(x: float) -> float:
    """0 -> 1, 1 -> 0.5, large -> 0; x is |value - ideal| / |limit - ideal|."""
    return 1.0 / (1.0 + x * x) if math.isfinite(x) else 0.0


def at_most(name: str, value: float, limit: float, note: str, ideal: float = 0.0) -> Measure:
    """A measure that fails when `value` rises over `limit` (ideal at or under `ideal`)."""
    x = max(0.0, value - ideal) / max(limit - ideal, 1e-12)
    ok = value <= limit
    return Measure(name, float(value), float(limit), round(curve(x), 4), PASS if ok else FAIL, note)


def at_least(name: str, value: float, limit: float, note: str, ideal: float) -> Measure:
    """A measure that fails when `value` falls under `limit` (ideal at or over `ideal`)."""
    x = max(0.0, ideal - value) / max(ideal - limit, 1e-12)
    ok = value >= limit
    return Measure(name, float(value), float(limit), round(curve(x), 4), PASS if ok else FAIL, note)


def capped(m: Measure, score: float, note: str) -> Measure:
    """The same verdict with the score held at or under `score` (e.g. a relative key: agreeing, less well)."""
    return Measure(m.name, m.value, m.limit, min(m.score, score), m.verdict, note)


def skipped(name: str, limit: float, note: str) -> Measure:
    return Measure(name, float("nan"), float(limit), 1.0, SKIPPED, note)
