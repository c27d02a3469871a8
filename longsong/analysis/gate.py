"""`analyze`: every analyzer on a window's new part, judged against the request and the song so far.

Rules that are choices, not measurements:
- The song so far is the reference once there is one: tempo and key are judged against the request only
  while the song agrees with it (window 0, or a song whose kept windows match the request; for the key,
  the song's estimate may be one step off on the circle of fifths: estimates slip to neighbours). A song
  whose first window missed the request and was kept anyway (best of failed attempts) is then held to
  itself, so its later windows are not all re-rolled for a mismatch they cannot fix.
- Tempo: 2x and 0.5x count as agreeing (score capped at 0.75): half/double time keeps the beat grid, and
  estimators confuse the two; 3:2 and everything else is judged as measured.
- Key: the Pearson correlation with the reference key's profile, or with its relative's (same signature:
  A minor / C major, which i-VI-III-VII progressions cannot tell apart), must reach the limit for the
  asked key or the song's; when the relative fits better, the score is capped at `relative_key_score`.
- Parts with no steady pulse (ambient, a drumless break) get no tempo or beat-phase verdict, unless the
  song so far had a strong one (`pulse_lost`): then the beat is gone and tempo fails.
- Parts shorter than `short_part_s` (a song's last window may add only seconds) get no tempo, beat-phase,
  key, loop or copy verdict: too few beats and chords to measure.
"""

from __future__ import annotations

import math

import numpy as np

from longsong.analysis import content, integrity, level, repetition, tempo
from longsong.analysis import key as keys
from longsong.analysis.features import Features
from longsong.analysis.judge import at_least, at_most, capped, skipped
from longsong.analysis.prep import prepare
from longsong.analysis.report import PASS, Expectation, Measure, Thresholds, WindowReport


def song_bpm(history: list[Features], pulse_min: float, asked: float | None) -> float | None:
    """Median tempo of the windows with a pulse, each folded by octaves next to the asked tempo (else the
    first window's): one window heard in half time must not pull the median between two octaves."""
    bpms = [f.bpm for f in history if f.pulse >= pulse_min and f.bpm > 0]
    if not bpms:
        return None
    anchor = asked if asked else bpms[0]
    folded = [b * 2.0 ** -round(math.log2(b / anchor)) for b in bpms]
    return float(np.median(folded))


def song_chroma(history: list[Features]) -> np.ndarray | None:
    if not history:
        return None
    w = np.array([max(f.duration_s, 1e-3) for f in history])
    return np.sum([f.chroma * wi for f, wi in zip(history, w)], axis=0) / w.sum()


def judge_tempo(bpm: tempo.Tempo, expect: Expectation, ref_song: float | None, song_pulse: float,
                th: Thresholds) -> Measure:
    limit = th.tempo_tolerance_pct
    asked = float(expect.bpm) if expect.bpm else None
    if asked is None and ref_song is None:
        return skipped("tempo", limit, f"{bpm.bpm:.1f} bpm; nothing asked, no song so far")
    if not bpm.strength >= th.pulse_min or not bpm.bpm > 0:
        if song_pulse >= th.pulse_lost:
            return at_most("tempo", 100.0, limit, f"pulse lost: strength {bpm.strength:.2f}, the song so far "
                                                  f"{song_pulse:.2f} (a beat-less part in a song with a beat)")
        return skipped("tempo", limit, f"no steady pulse (strength {bpm.strength:.2f} < {th.pulse_min:g})")
    refs = []
    if ref_song is not None:
        refs.append(("song so far", ref_song))
    if asked is not None and (ref_song is None or tempo.octave_ratio(ref_song, asked)[0] * 100 <= limit):
        refs.append(("asked", asked))
    errors = [(*tempo.octave_ratio(bpm.bpm, r), label) for label, r in refs]
    err, octaves, label = max(errors)  # the worse of the two comparisons
    note = f"{bpm.bpm:.1f} bpm, " + ", ".join(f"{lb} {rv:.1f}" for lb, rv in refs)
    m = at_most("tempo", 100 * err, limit, note + f" (off {100 * err:.1f} % from {label})")
    if octaves and m.verdict == PASS:
        m = capped(m, 0.75, m.note + f"; {'double' if octaves > 0 else 'half'} time")
    return m


def judge_phase(bands: np.ndarray, start_s: float, history: list[Features], tempo_m: Measure,
                th: Thresholds) -> Measure:
    """The new part's first 8 s folded at the previous window's beat period, against that window's last 8 s
    folded alike: the shift between the two onset patterns is how far the beat moved at the join. Patterns
    that look alike shifted by half a beat (four-on-the-floor kick with an off-beat bass and hats) cannot
    tell a jump from a change of balance: when the song's own grid fits nearly as well as the best shift
    (`beat_ambiguity` of its correlation), the part counts as on the grid."""
    limit = th.beat_phase_tolerance
    prev = history[-1] if history else None
    if prev is None or not (prev.pulse >= th.pulse_min and prev.bpm > 0 and np.any(prev.beat_fold)):
        return skipped("beat_phase", limit, "no beat grid at the end of the song so far")
    if tempo_m.verdict != PASS:
        return skipped("beat_phase", limit, "tempo not agreeing or not measured: no grid to compare")
    later = tempo.fold(bands, prev.period_s, start_s, first=True)
    near, near_corr, best, corr = tempo.fold_offset(prev.beat_fold, later, limit)
    if corr < th.beat_pattern_min:
        return skipped("beat_phase", limit, f"beat patterns too different to align (correlation {corr:.2f})")
    off = near if near_corr >= th.beat_ambiguity * corr else best
    note = (f"beat {off:+.2f} beat off the grid of the song so far ({prev.bpm:.1f} bpm; pattern correlation "
            f"{near_corr:.2f} on the grid, {corr:.2f} at {best:+.2f} beat)")
    return at_most("beat_phase", abs(off), limit, note)


def judge_key(c: np.ndarray, expect: Expectation, history: list[Features], th: Thresholds) -> tuple[Measure, str]:
    """Agreement with the asked key and with the song's key (estimated from the earlier windows' pooled
    chroma), the better of the two: songs move to neighbour keys in a bridge, and a song's estimate slips
    to a neighbour of what was asked. A song whose key is over one step of the circle of fifths from the
    request (kept although it missed it) is judged against itself only."""
    r = keys.correlations(c)
    own = int(np.argmax(r))
    limit = th.key_min_correlation
    hist_c = song_chroma(history)
    song_key = int(np.argmax(keys.correlations(hist_c))) if hist_c is not None else None
    asked = keys.key_index(expect.key) if expect.key else None
    refs = []
    if asked is not None and (song_key is None or keys.signature_steps(asked, song_key) <= 1):
        refs.append(("asked", asked))
    if song_key is not None:
        refs.append(("song so far", song_key))
    if not refs:
        return skipped("key", limit, f"{keys.key_name(own)}; nothing asked, no song so far"), keys.key_name(own)
    agreement = [(max(r[k], r[keys.relative(k)]), label, k) for label, k in refs]
    value, _, ref = max(agreement)
    rel = keys.relative(ref)
    note = f"{keys.key_name(own)} (r {r[own]:.2f}); " + ", ".join(
        f"{lb} {keys.key_name(k)} r {r[k]:.2f} (relative {r[keys.relative(k)]:.2f})" for lb, k in refs)
    m = at_least("key", float(value), limit, note, ideal=0.9)
    if m.verdict == PASS and r[rel] > r[ref]:
        m = capped(m, th.relative_key_score, note + f"; fits {keys.key_name(rel)}, the relative, better")
    return m, keys.key_name(own)


def judge_loudness(lufs: float, history: list[Features], th: Thresholds) -> Measure:
    """Drift of the part's median short-term loudness from the song's running median: a drop is judged
    at `loudness_drift_db`, a rise at `loudness_rise_db` (value: the drift in units of the drop limit)."""
    limit = th.loudness_drift_db
    values = np.concatenate([f.short_term for f in history]) if history else np.zeros(0)
    values = values[values > th.silence_lufs] if values.size else values
    if not values.size:
        return skipped("loudness", limit, f"{lufs:.1f} LUFS; no song so far")
    ref = float(np.median(values))
    drift = lufs - ref
    value = -drift if drift < 0 else drift * limit / th.loudness_rise_db
    return at_most("loudness", value, limit, f"{lufs:.1f} LUFS short-term median, song so far {ref:.1f} "
                                             f"({drift:+.1f} dB; limits -{limit:g} / +{th.loudness_rise_db:g} dB)")


def judge_silence(short: np.ndarray, momentary: np.ndarray, duration: float, th: Thresholds) -> Measure:
    limit = th.dropout_s
    loudest = float(short.max()) if short.size else level.FLOOR_LUFS
    if loudest < th.silence_lufs:
        return at_most("silence", duration, limit, f"silent throughout: loudest {loudest:.1f} LUFS short-term")
    inner, trailing, at = level.silent_runs(momentary, th.silence_lufs)
    tail = trailing * limit / th.tail_silence_s
    if inner >= tail:
        where = f" at {at:.1f} s" if inner > 0 else ""
        return at_most("silence", inner, limit, f"longest silent gap {inner:.1f} s{where}; ends with "
                                                f"{trailing:.1f} s of silence")
    return at_most("silence", tail, limit, f"ends with {trailing:.1f} s of silence "
                                           f"(allowed {th.tail_silence_s:g} s at the end)")


def judge_collapse(peaks: float, flat: float, history: list[Features], th: Thresholds) -> Measure:
    """Fails when the spectral-peak share fell under `collapse_ratio` of the song's median AND either it is
    low in itself (under `collapse_floor`) or the spectrum turned noisy (flatness ratio, song / part, under
    `collapse_flatness`). value = max(peak ratio, collapse_ratio * evidence) with evidence = the smaller of
    share / floor and flatness ratio / collapse_flatness (>= 1: not collapsed), capped at 1."""
    limit = th.collapse_ratio
    if not history:
        return skipped("collapse", limit, f"tonal peak share {peaks:.2f}, flatness {flat:.4f}; no song so far")
    ref_p = float(np.median([f.peaks for f in history]))
    ref_f = float(np.median([f.flatness for f in history]))
    ratio = min(1.0, peaks / max(ref_p, 1e-9))
    flat_ratio = min(1.0, ref_f / max(flat, 1e-9))
    evidence = min(peaks / th.collapse_floor, flat_ratio / th.collapse_flatness)
    value = min(1.0, max(ratio, limit * evidence))
    return at_least("collapse", value, limit, f"tonal peak share {peaks:.2f}, {100 * ratio:.0f} % of the song's "
                                              f"{ref_p:.2f} (low under {th.collapse_floor:g}); flatness {flat:.4f}, "
                                              f"song {ref_f:.4f} (ratio {flat_ratio:.2f}, noisy under "
                                              f"{th.collapse_flatness:g})", ideal=1.0)


def analyze(audio: np.ndarray, sample_rate: int, start_s: float, history: list[Features],
            expect: Expectation, thresholds: Thresholds) -> tuple[WindowReport, Features]:
    """audio: float32 (channels, samples) = the window's NEW part only (context already cut off);
    start_s: its track time; history: Features of the song's earlier kept windows, in order (empty for window 0)."""
    th = thresholds
    p = prepare(audio, sample_rate)
    duration = p.duration_s
    measures: list[Measure] = []

    measures.append(at_most("nan", p.nonfinite, 0.0, f"{100 * p.nonfinite:.3g} % of samples NaN or inf"
                            if p.nonfinite else "all samples finite"))
    clip = integrity.clipped_share(p.audio)
    measures.append(at_most("clipping", clip, th.clip_fraction, f"{100 * clip:.3g} % of samples at full scale"))
    dc = integrity.dc_offset(p.audio)
    measures.append(at_most("dc", dc, th.dc_offset, f"largest channel mean {dc:+.4f}"))

    short, momentary = level.loudness_curves(p.audio, sample_rate)
    audible = short[short > th.silence_lufs]
    lufs = float(np.median(audible)) if audible.size else float(short.max())
    measures.append(judge_silence(short, momentary, duration, th))
    measures.append(judge_loudness(lufs, history, th))

    ref_song = song_bpm(history, th.pulse_min, float(expect.bpm) if expect.bpm else None)
    reference = ref_song if ref_song is not None else (float(expect.bpm) if expect.bpm else None)
    bpm = tempo.estimate(p.onset, reference)
    short_note = f"part of {duration:.1f} s, under {th.short_part_s:g} s: too short to judge"
    if duration < th.short_part_s:
        tempo_m = skipped("tempo", th.tempo_tolerance_pct, short_note)
        measures += [tempo_m, skipped("beat_phase", th.beat_phase_tolerance, short_note)]
    else:
        song_pulse = float(np.median([f.pulse for f in history])) if history else 0.0
        tempo_m = judge_tempo(bpm, expect, ref_song, song_pulse, th)
        measures += [tempo_m, judge_phase(p.onset_bands, start_s, history, tempo_m, th)]

    c = keys.chroma(p.mag)
    key_m, own_key = judge_key(c, expect, history, th)
    if duration < th.short_part_s:  # a chord or two: no key
        key_m = skipped("key", th.key_min_correlation, short_note + f" ({own_key} heard)")
    measures.append(key_m)

    peaks, flat = content.peak_share(p.mag), content.flatness(p.mag)
    measures.append(judge_collapse(peaks, flat, history, th))

    if duration < th.short_part_s:
        measures.append(skipped("loop", th.loop_similarity, short_note))
    else:
        sim, lag, at = repetition.loop_similarity(p.mel_db, th.loop_span_s)
        measures.append(at_most("loop", max(sim, 0.0), th.loop_similarity,
                                f"repeats itself every {lag:.2f} s from {at:.1f} s with similarity {sim:.3f}",
                                ideal=0.5))
    prints = [f.fingerprint for f in history if f.fingerprint.size]
    if duration < th.short_part_s:
        measures.append(skipped("copy", th.copy_similarity, short_note))
    elif prints:
        sim, frame, at = repetition.copy_similarity(p.mel_db, prints, th.copy_span_s)
        src = copy_source(history, frame)
        measures.append(at_most("copy", max(sim, 0.0), th.copy_similarity,
                                f"from {at:.1f} s it matches the song at {src:.1f} s with similarity {sim:.3f}",
                                ideal=0.5))
    else:
        measures.append(skipped("copy", th.copy_similarity, "no earlier windows"))

    beat_fold = np.zeros(2 * tempo.PHASE_BINS, np.float32)
    if bpm.bpm > 0 and bpm.strength >= th.pulse_min:
        beat_fold = tempo.fold(p.onset_bands, 60.0 / bpm.bpm, start_s, first=False)
    feats = Features(start_s=float(start_s), duration_s=float(duration), bpm=float(bpm.bpm),
                     pulse=float(bpm.strength), key=own_key, lufs=lufs, peaks=peaks, flatness=flat,
                     chroma=c.astype(np.float32), short_term=short.astype(np.float32),
                     fingerprint=repetition.fingerprint(p.mel_db), beat_fold=beat_fold)
    facts = {"bpm": round(float(bpm.bpm), 2), "pulse": round(bpm.strength, 3), "key": own_key,
             "lufs": round(lufs, 2), "peak_share": round(peaks, 4), "flatness": round(flat, 5), "duration_s": round(duration, 3)}
    return WindowReport(measures, facts), feats


def copy_source(history: list[Features], frame: int) -> float:
    """Track time of fingerprint frame `frame` of the concatenated history."""
    for f in history:
        n = f.fingerprint.shape[1] if f.fingerprint.ndim == 2 else 0
        if frame < n:
            return f.start_s + frame * repetition.POOL / repetition.FPS
        frame -= n
    return math.nan


def warm_up() -> None:
    """Run once at worker start so librosa's numba compilation is not paid by the first song."""
    sr = 32000
    t = np.arange(int(12 * sr)) / sr
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t))) / 2
    audio = np.stack([tone, tone]).astype(np.float32)
    _, first = analyze(audio, sr, 0.0, [], Expectation(120.0, "A minor"), Thresholds())
    analyze(audio, sr, 12.0, [first], Expectation(120.0, "A minor"), Thresholds())
