"""Where each seam's crossfade goes, and what the assembled track sounds like there.

Placement (`place`): the seam's room is its overlap less MARGIN_FRAMES at either end (decoder
warm-up at the later window's start, the earlier window's end). On that room, in both windows,
a rectified log-magnitude flux over quarter-octave bands at the 50 Hz frame rate is the onset
envelope; the two windows' envelopes (each over its own spread) are summed. The beat period
(60 to 200 bpm) scores the envelope's autocorrelation at its first HARMONICS multiples, weighted
by a log-normal prior at 120 bpm; the beat counts as found when that score (the salience) is at
least MIN_SALIENCE and the flux is not flat (MIN_FLUX): noise, drones and held tones are not.
A steady grid at that period, fitted to the envelope and snapped to its peaks, gives the beats;
the downbeat phase is the one of 4 whose beats carry the most low-band (< 200 Hz: the kick)
onset, by DOWNBEAT_RATIO over the other phases' mean. The fade lasts one beat (clamped to
FADE_BOUNDS and to the room) and ends LEAD_FRAMES before the chosen beat, so that beat's attack
comes whole from the later window and the previous beat's from the earlier one: no doubled
transients. The chosen beat is the downbeat (else any strong beat) whose fade is nearest the
overlap's centre. Nothing found: the plan's centred fade of the request's length. All in whole
frames, from windows i-1 and i only: a song's first k windows assemble to the same samples up
to seam k.

Analysis runs on a mono mix block-averaged to about ANALYSIS_RATE (a whole number of samples
per frame), in numpy: librosa's beat_track JIT-compiles its kernels in every new process (~3 s),
and librosa is no dependency of the CPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from longsong.frames import FRAME_RATE

MARGIN_FRAMES = 2 * FRAME_RATE  # clear of both windows' edges
LEAD_FRAMES = 2  # the fade ends 40 ms before the beat: the attack is wholly the later window's
FADE_BOUNDS = (FRAME_RATE // 5, FRAME_RATE)  # one beat, within 0.2 .. 1 s
LAGS = (15, 50)  # beat periods searched, in frames: 200 .. 60 bpm
PRIOR_LAG, PRIOR_OCTAVES = 25, 1.0  # log-normal tempo prior: 120 bpm, one octave wide
HARMONICS = 4  # multiples of a candidate period whose autocorrelation it is scored on
MIN_SALIENCE = 0.2  # periodicity needed to call it a beat (noise, drones: < 0.15; music: > 0.25)
MIN_FLUX = 0.02  # mean flux below this is flat (silence, held tones, a slow swell; music: >= 0.06)
DOWNBEAT_RATIO = 1.25  # the downbeat phase's low onsets over the other phases' mean
ANALYSIS_RATE = 8000  # analysis sample rate aimed at (at least this)
LOW_HZ = (30.0, 200.0)  # analysis starts at the first; below the second is the kick's, for downbeats
BAND_RATIO = 2 ** (1 / 4)  # analysis bands: a quarter octave wide (or one FFT bin, if wider)
GAMMA = 100.0  # log compression of the magnitude spectrum: log1p(GAMMA * |X| / max|X|)


@dataclass(frozen=True)
class Placement:
    start: int  # first frame of the crossfade on the timeline
    length: int  # crossfade frames
    kind: str  # "downbeat", "beat" or "centre"
    period: float = 0.0  # beat period in frames (0: no beat found)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Analysis:
    """How the audio is looked at: block-average factor, hop and FFT size at the analysis rate."""

    factor: int
    hop: int
    n_fft: int
    rate: int

    @classmethod
    def for_rate(cls, sample_rate: int) -> "Analysis":
        """The largest block-average factor dividing the frame hop that keeps >= ANALYSIS_RATE."""
        hop = sample_rate // FRAME_RATE
        factor = max([1] + [d for d in range(2, hop + 1) if hop % d == 0 and sample_rate // d >= ANALYSIS_RATE])
        rate = sample_rate // factor
        n_fft = 1 << int(round(np.log2(0.064 * rate)))  # ~64 ms
        return cls(factor, hop // factor, n_fft, rate)

    def mono(self, audio: np.ndarray) -> np.ndarray:
        """Channel mean, block-averaged by `factor` (a crude low-pass; enough for onsets)."""
        n = audio.shape[1] // self.factor * self.factor
        x = audio[0, :n].astype(np.float32)
        for channel in audio[1:]:
            x += channel[:n]
        return x.reshape(-1, self.factor).sum(axis=1) * np.float32(1 / (self.factor * len(audio)))

    def bands(self) -> tuple[np.ndarray, np.ndarray]:
        """(first FFT bin of each band, its Hz): bands BAND_RATIO wide from LOW_HZ[0] up, at least
        one bin each, so the kick's octave weighs as much as the hats' (linear bins would not)."""
        freqs = np.fft.rfftfreq(self.n_fft, 1 / self.rate)
        ids = np.floor(np.log(np.maximum(freqs, LOW_HZ[0]) / LOW_HZ[0]) / np.log(BAND_RATIO)).astype(int)
        ids[freqs < LOW_HZ[0]] = -1
        first = np.flatnonzero(np.diff(ids, prepend=-2))
        first = first[ids[first] >= 0]
        return first, freqs[first]

    def flux(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(all-band, low-band) rectified log-magnitude flux of mono `y`, padded by n_fft // 2 on
        both sides: entry k is frame k, centred n_fft // 2 + k * hop into `y`."""
        frames = sliding_window_view(y, self.n_fft)[::self.hop] * np.hanning(self.n_fft).astype(np.float32)
        first, lowest = self.bands()
        mag = np.add.reduceat(np.abs(np.fft.rfft(frames, axis=1))[:, first[0]:], first - first[0], axis=1)
        peak = mag.max()
        if peak <= 0:
            return np.zeros(len(mag)), np.zeros(len(mag))
        rise = np.maximum(np.diff(np.log1p(GAMMA / peak * mag), axis=0, prepend=0.0), 0.0)
        rise[0] = 0.0
        return rise.mean(axis=1), rise[:, lowest < LOW_HZ[1]].mean(axis=1)


def excerpt_flux(window: np.ndarray, window_start: int, start: int, end: int, hop: int,
                 an: Analysis) -> tuple[np.ndarray, np.ndarray]:
    """Flux of the part of a window on timeline frames [start, end), one entry per frame, the
    FFT frames reaching into the window's audio just outside (edge-padded where there is none)."""
    pad = an.n_fft // 2 * an.factor
    lo, hi = (start - window_start) * hop - pad, (end - window_start) * hop + pad
    piece = window[:, max(lo, 0):min(hi, window.shape[1])]
    piece = np.pad(piece, ((0, 0), (max(0, -lo), max(0, hi - window.shape[1]))), mode="edge")
    env, low = an.flux(an.mono(piece))
    return env[:end - start], low[:end - start]


def _scaled(x: np.ndarray) -> np.ndarray:
    """Envelope over its own spread, so a quiet window counts as much as a loud one; zero when
    flat (silence, a held tone: only rounding moves its spectrum)."""
    spread = x.std()
    return x / spread if spread > 0 and x.mean() >= MIN_FLUX else np.zeros_like(x)


def _autocorrelation(env: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of the envelope, smoothed (σ = 1 frame: onsets jitter and
    periods fall between frames) and less its 1 s moving mean (trends and swells do not count)."""
    smooth = np.convolve(env, _gaussian(3), mode="same")
    x = smooth - np.convolve(smooth, np.ones(FRAME_RATE) / FRAME_RATE, mode="same")
    ac = np.correlate(x, x, mode="full")[len(x) - 1:]
    return ac / ac[0] if ac[0] > 0 else np.zeros_like(ac)


def beat_period(env: np.ndarray) -> tuple[float, float]:
    """(period in frames, salience), 0 when there is none. Each candidate period scores the mean
    autocorrelation at its first HARMONICS multiples (those within half the envelope), so that a
    bar's or a half-beat's periodicity alone does not win; weighted by the tempo prior; the
    salience is the unweighted score."""
    if len(env) < 2 * LAGS[1]:
        return 0.0, 0.0
    ac = _autocorrelation(env)
    if not ac.any():
        return 0.0, 0.0
    periods = np.arange(LAGS[0], LAGS[1] + 0.01, 0.25)
    multiples = periods[:, None] * np.arange(1, HARMONICS + 1)
    usable = multiples <= len(env) // 2  # lags with at least half the envelope to compare
    score = (np.interp(multiples, np.arange(len(ac)), ac) * usable).sum(axis=1) / usable.sum(axis=1)
    prior = np.exp(-0.5 * (np.log2(periods / PRIOR_LAG) / PRIOR_OCTAVES) ** 2)
    best = int(np.argmax(score * prior))
    return float(periods[best]), float(score[best])


def _gaussian(half: int) -> np.ndarray:
    return np.exp(-0.5 * np.arange(-half, half + 1) ** 2)


def beat_grid(env: np.ndarray, period: float) -> np.ndarray:
    """Frames of a steady beat grid fitted to the envelope (period within 3 %, any phase), each
    snapped to the strongest envelope frame within 2 frames."""
    smooth = np.convolve(env, _gaussian(3), mode="same")
    best, grid = -1.0, np.zeros(0, int)
    for p in period * (1 + np.linspace(-0.03, 0.03, 13)):
        phases = np.arange(0, p, 0.5)
        beats = np.round(phases[:, None] + p * np.arange(int((len(env) - 1) // p) + 1)).astype(int)
        valid = beats < len(env) - 1
        score = (smooth[np.where(valid, beats, 0)] * valid).sum(axis=1) / valid.sum(axis=1)
        i = int(np.argmax(score))
        if score[i] > best:
            best, grid = score[i], beats[i][valid[i]]
    near = np.clip(grid[:, None] + np.arange(-2, 3), 0, len(env) - 1)
    return near[np.arange(len(grid)), np.argmax(env[near], axis=1)]


def downbeat_phase(beats: np.ndarray, low: np.ndarray) -> int | None:
    """Index (mod 4) of the beats that carry the most low-frequency onset, when it stands out by
    DOWNBEAT_RATIO over the other three phases' mean and there are two bars to judge from."""
    if len(beats) < 8:
        return None
    near = np.clip(beats[:, None] + np.arange(-1, 2), 0, len(low) - 1)
    strength = low[near].sum(axis=1)  # an attack on a frame edge splits its rise over two frames
    means = np.array([strength[p::4].mean() for p in range(4)])
    best = int(np.argmax(means))
    others = np.delete(means, best).mean()
    return best if means[best] > 0 and means[best] >= DOWNBEAT_RATIO * others else None


def fade_length(period: float, room: int) -> int:
    """One beat in whole frames, within FADE_BOUNDS, and no longer than the room allows."""
    return int(min(np.clip(round(period), *FADE_BOUNDS), room - LEAD_FRAMES))


def place(earlier: tuple[np.ndarray, int], later: tuple[np.ndarray, int], room: tuple[int, int],
          centre: tuple[int, int], hop: int, an: Analysis) -> Placement:
    """The crossfade of one seam. earlier/later: (window, its start frame); room: the timeline
    frames both windows cover, [first, end); centre: the plan's centred (start, end) fallback."""
    fallback = Placement(centre[0], centre[1] - centre[0], "centre")
    lo, hi = room[0] + MARGIN_FRAMES, room[1] - MARGIN_FRAMES
    if hi - lo < FADE_BOUNDS[0] + LEAD_FRAMES:
        return fallback
    (e_env, e_low), (l_env, l_low) = (excerpt_flux(w, s, lo, hi, hop, an) for w, s in (earlier, later))
    env, low = _scaled(e_env) + _scaled(l_env), _scaled(e_low) + _scaled(l_low)
    period, salience = beat_period(env)
    if salience < MIN_SALIENCE:
        return fallback
    beats = beat_grid(env, period)
    length = fade_length(period, hi - lo)
    phase = downbeat_phase(beats, low)
    strong = env[beats] >= env.mean()  # an onset there, not a grid point in a break
    fits = (beats >= length + LEAD_FRAMES) & strong  # the fade starts inside the room
    middle = (room[0] + room[1]) / 2 - lo
    for kind, chosen in (("downbeat", fits & (np.arange(len(beats)) % 4 == phase)), ("beat", fits)):
        if phase is None and kind == "downbeat" or not chosen.any():
            continue
        candidates = beats[chosen]
        beat = int(candidates[np.argmin(np.abs(candidates - LEAD_FRAMES - length / 2 - middle))])
        return Placement(lo + beat - LEAD_FRAMES - length, length, kind, period)
    return fallback


def level_window(p: Placement) -> int:
    """Frames each side for the level step: the whole beats nearest 1 s (1 s without a beat)."""
    if not p.period:
        return FRAME_RATE
    return int(round(p.period * max(1, round(FRAME_RATE / p.period))))


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12)) if x.size else -120.0


def level_step_db(track: np.ndarray, p: Placement, hop: int) -> float:
    """RMS level of the track just after the crossfade minus just before it, over whole beats (both
    spans start at the same beat phase, so the beat's own pulse adds no step; a loud downbeat just
    after the fade does, as it is in the track)."""
    w = level_window(p)
    before = track[:, max(0, (p.start - w) * hop):p.start * hop]
    after = track[:, p.end * hop:(p.end + w) * hop]
    return rms_db(after) - rms_db(before) if before.size and after.size else 0.0


def track_flux(track: np.ndarray, an: Analysis) -> np.ndarray:
    """All-band flux of the whole track, one entry per frame (reflect-padded at the ends)."""
    y = an.mono(track)
    pad = min(an.n_fft // 2, len(y) - 1)
    return an.flux(np.pad(y, (pad, an.n_fft - pad), mode="reflect" if pad > 0 else "edge"))[0]


def flux_z(flux: np.ndarray, p: Placement) -> float:
    """The largest flux on the crossfade's frames (both ends included), as a z-score against the
    largest flux of every same-length span of the track: a click or a clash stands out, the one
    beat every span that long holds does not."""
    span = p.length + 1
    if len(flux) < span + 1 or p.end >= len(flux):
        return 0.0
    maxima = sliding_window_view(flux, span).max(axis=1)
    spread = maxima.std()
    return float((flux[p.start:p.end + 1].max() - maxima.mean()) / spread) if spread > 0 else 0.0
