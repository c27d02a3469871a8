"""The first watermark scheme (keyed spread spectrum, 32-bit track id): files delivered before the band-energy
scheme in `watermark` carry it, so `watermark.detect` falls back to this detector; `embed` stays to make such
files in tests.

Embedding multiplies STFT magnitudes in 1-6 kHz by (1 + alpha * chip), chip = +-1 from a
key-seeded pattern times the sign of the codeword bit the cell carries. Being multiplicative it
follows the music (masked where the band is loud, absent where it is silent). The pattern repeats
every BLOCK frames (~4 s), so any excerpt of a few blocks decodes.

Codeword (64 bits): 16 keyed sync bits, the 32-bit id, 16 bits of HMAC(key, id). Detection works
on log band power: it predicts the host from the neighbouring frames, folds the residual modulo
the block, finds the block phase (and half-hop offset, so encoder delays and excerpts need no
alignment) from the sync bits, then reads the other bits by correlation. Every statistic is a
z-score (chips are independent of the music), so thresholds hold whatever the music.

Depth: alpha <= 0.05 (-26 dB re the band), lowered where needed to keep the mark 31 dB under the
whole signal, and faded out locally where it would push a sample over the master's own peak.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from functools import lru_cache
from math import gcd

import numpy as np
import soxr
from scipy import fft, ndimage, signal, special

RATE = 32000  # the pattern is defined at this rate; other rates are resampled
HOP = 256
N_FFT = 2 * HOP
BAND = slice(16, 97)  # bins of 1000..6000 Hz at RATE / N_FFT = 62.5 Hz
BLOCK = 512  # frames per codeword repetition (4.1 s)
N_SYNC, N_ID, N_CHECK = 16, 32, 16
N_BITS = N_SYNC + N_ID + N_CHECK
ALPHA_MAX = 0.05  # magnitude modulation depth: -26 dB relative to the band
MIN_SNR_DB = 31.0  # watermark power at least this far below the whole signal
FLOOR = 1e-2  # log power floor relative to the mean: quiet cells carry mostly leakage
NORM_CELLS = (3, 3)  # neighbourhood (frames, bins) whose residual RMS normalises a cell
SYNC_Z = 5.0  # sync threshold; with the 16-bit check a false positive is ~1e-9 per track
MAX_MARKS = 3
SPAN_S, SPAN_Z = 5.0, 4.0  # localisation: windows of 5 s whose codeword correlation reaches z 4
# Speed changes (resampling) searched when nothing is found as it is, in files of MIN_SEARCH_S or more
# (shorter ones hold too little of the sync to stand out among so many tries): +-2.2 % in steps of
# 0.04 % on the middle SEARCH_S, then finer steps on longer excerpts (a step keeps the excerpt's drift
# under a quarter frame, so the fold still adds up).
SPEED_RANGE, SPEED_STEP, SEARCH_S, MIN_SEARCH_S = 0.022, 0.0004, 24.0, 15.0
REFINE = ((24.0, 0.0001), (72.0, 0.00003))  # (excerpt s, step)
WIDE = slice(BAND.start - 2, BAND.stop + 4)  # the bins a warp within SPEED_RANGE reads
_WINDOW = np.sin(np.pi * (np.arange(N_FFT) + 0.5) / N_FFT).astype(np.float32)  # sqrt-Hann


@dataclass
class Span:
    start_s: float  # in the file's own time
    end_s: float
    z: float  # the strongest window's correlation with the mark's codeword


@dataclass
class Mark:
    track_id: int
    confidence: float  # v1: the estimated probability that all 48 id/check bits were read right; v2: 1 - the
    # chance that noise passes its sync and check bits
    speed: float  # the speed change it was found at (1.0: none)
    spans: list[Span]


@dataclass
class Detection:
    found: bool
    track_id: int | None  # the strongest mark's
    confidence: float
    marks: list[Mark] = field(default_factory=list)  # every id found, strongest first


@dataclass(frozen=True)
class _Pattern:
    chips: np.ndarray  # (BLOCK, n_band) +-1
    bit_of_cell: np.ndarray  # (BLOCK, n_band) codeword bit index of each cell
    sync: np.ndarray  # (N_SYNC,) +-1


@lru_cache(maxsize=8)
def _pattern(key: bytes) -> _Pattern:
    seed = hashlib.sha256(b"longsong-watermark-pattern\0" + key).digest()
    rng = np.random.default_rng(np.frombuffer(seed, dtype=np.uint64))
    n_band = BAND.stop - BAND.start
    chips = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(BLOCK, n_band))
    bit_of_cell = (rng.permutation(BLOCK * n_band) % N_BITS).reshape(BLOCK, n_band)
    return _Pattern(chips, bit_of_cell, rng.choice(np.array([-1.0, 1.0]), size=N_SYNC))


def _check_bits(track_id: int, key: bytes) -> np.ndarray:
    """16 keyed check bits: a detector without the key cannot forge or confirm an id."""
    mac = hmac.new(key, b"longsong-watermark-id\0" + track_id.to_bytes(4, "big"), hashlib.sha256)
    return np.unpackbits(np.frombuffer(mac.digest()[:2], dtype=np.uint8))


def _codeword(track_id: int, key: bytes) -> np.ndarray:
    """+-1 signs of the 64 codeword bits."""
    id_bits = np.unpackbits(np.frombuffer(track_id.to_bytes(4, "big"), dtype=np.uint8))
    payload = np.concatenate([id_bits, _check_bits(track_id, key)]) * 2.0 - 1.0
    return np.concatenate([_pattern(key).sync, payload])


def _resample(audio: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    if sr_from == sr_to:
        return audio
    g = gcd(sr_from, sr_to)
    return signal.resample_poly(audio, sr_to // g, sr_from // g, axis=-1).astype(np.float32)


def _block_offset(track_id: int, key: bytes) -> int:
    """Where in the block the pattern starts, keyed by the id: two songs mixed from the same start keep
    their sync peaks apart (the detector searches every shift, so this costs it nothing)."""
    mac = hmac.new(key, b"longsong-watermark-offset\0" + track_id.to_bytes(4, "big"), hashlib.sha256)
    return int.from_bytes(mac.digest()[:2], "big") % BLOCK


def _watermark_signal(audio: np.ndarray, track_id: int, key: bytes) -> np.ndarray:
    """Unit-depth watermark at RATE: ISTFT of the band STFT times the keyed +-1 pattern."""
    pattern = _pattern(key)
    cells = pattern.chips * _codeword(track_id, key).astype(np.float32)[pattern.bit_of_cell]
    channels, n = audio.shape
    n_frames = n // HOP + 1
    padded = np.zeros((channels, (n_frames + 1) * HOP), dtype=np.float32)
    padded[:, HOP : HOP + n] = audio
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[:, ::HOP] * _WINDOW
    spec = fft.rfft(frames, axis=-1, workers=-1)  # the mastering stage has the other core idle
    spec[..., : BAND.start] = 0.0
    spec[..., BAND.stop :] = 0.0
    spec[..., BAND] *= cells[(np.arange(n_frames) + _block_offset(track_id, key)) % BLOCK]
    out_frames = fft.irfft(spec, n=N_FFT, axis=-1, overwrite_x=True, workers=-1)
    out_frames *= _WINDOW
    out = np.zeros((channels, n_frames + 1, HOP), dtype=np.float32)
    out[:, :-1] += out_frames[..., :HOP]
    out[:, 1:] += out_frames[..., HOP:]
    return out.reshape(channels, -1)[:, HOP : HOP + n]


def _peak_gain(audio: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """Smooth gain <= 1 for the mark keeping |audio + gain * mark| under audio's own sample
    peak, so the watermark does not raise the (true) peak of an already limited master.

    The per-sample bound is taken as a minimum over 3 HOP-blocks and linearly interpolated
    between block centres, which stays under the bound everywhere."""
    ceiling = np.abs(audio).max()
    bound = np.clip((ceiling - np.abs(audio)) / (np.abs(mark) + 1e-12), 0.0, 1.0).min(axis=0)
    if bound.min() >= 1.0:
        return np.ones(1, dtype=np.float32)
    n = bound.size
    blocks = np.pad(bound, (0, -n % HOP), constant_values=1.0).reshape(-1, HOP).min(axis=1)
    blocks = ndimage.minimum_filter1d(blocks, 3, mode="nearest")
    centres = np.arange(blocks.size) * HOP + (HOP - 1) / 2
    return np.interp(np.arange(n), centres, blocks).astype(np.float32)


def _power(audio: np.ndarray) -> float:
    return float(np.square(audio).sum(dtype=np.float64)) / max(audio.size, 1)


def embed(audio: np.ndarray, sr: int, track_id: int, key: bytes) -> np.ndarray:
    """Watermarked copy of float audio (channels, samples) carrying the 32-bit `track_id`."""
    if not 0 <= track_id < 2**32:
        raise ValueError(f"track_id must fit in 32 bits, got {track_id}")
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    mark = _watermark_signal(_resample(audio, sr, RATE), track_id, key)
    mark = _resample(mark, RATE, sr)[:, : audio.shape[1]]
    power_mark = _power(mark)
    if power_mark == 0.0:
        return audio.copy()
    alpha = min(ALPHA_MAX, np.sqrt(_power(audio) / power_mark) * 10 ** (-MIN_SNR_DB / 20))
    mark *= alpha
    return audio + _peak_gain(audio, mark) * mark


def _band_power(audio: np.ndarray, bins: slice = BAND) -> np.ndarray:
    """Band power summed over channels, frames every HOP/2 samples (both half-hop phases)."""
    power = 0.0
    for ch in audio:
        ch = np.pad(ch, (0, max(0, N_FFT - ch.size)))
        frames = np.lib.stride_tricks.sliding_window_view(ch, N_FFT)[:: HOP // 2]
        band = fft.rfft(frames * _WINDOW, axis=-1)[:, bins]
        power = power + band.real**2 + band.imag**2
    return power


def _log(power: np.ndarray) -> np.ndarray:
    """Log power with a floor relative to the mean: quiet cells carry mostly leakage."""
    return np.log(power + FLOOR * float(np.mean(power)) + 1e-20)


def _log_band_power(audio: np.ndarray) -> np.ndarray:
    return _log(_band_power(audio))


def _warp(power: np.ndarray, speed: float) -> np.ndarray:
    """Band power of WIDE half-hop frames as it would read, every HOP, after undoing a speed change by
    `speed`: restored frame j is frame j / speed of this one, bin f is bin f * speed (linear interpolation
    on both axes); an approximation of resampling that costs no STFT."""
    rows = np.arange(0, int((len(power) - 1) * speed), 2) / speed
    cols = np.arange(BAND.start, BAND.stop) * speed - WIDE.start
    r0, c0 = rows.astype(np.int64), cols.astype(np.int64)
    wr, wc = (rows - r0)[:, None].astype(np.float32), (cols - c0).astype(np.float32)
    by_bin = power[:, c0] * (1 - wc) + power[:, c0 + 1] * wc
    return by_bin[r0] * (1 - wr) + by_bin[np.minimum(r0 + 1, len(power) - 1)] * wr


def _residual(log_power: np.ndarray) -> np.ndarray:
    """Host-removed log power: each frame less the mean of its two neighbours (independent chips, so the
    mark is kept whole), scaled to unit local RMS so transients do not drown the rest."""
    residual = np.zeros_like(log_power)
    residual[1:-1] = log_power[1:-1] - 0.5 * (log_power[:-2] + log_power[2:])
    rms = np.sqrt(np.maximum(ndimage.uniform_filter(residual**2, NORM_CELLS), 0.0))
    return residual / (rms + 1e-6)


def _fold(residual: np.ndarray) -> np.ndarray:
    """Residual summed modulo BLOCK: repetitions add up, music averages out."""
    n_blocks = max(1, -(-len(residual) // BLOCK))
    padded = np.zeros((n_blocks * BLOCK, residual.shape[1]), dtype=np.float32)
    padded[: len(residual)] = residual
    return padded.reshape(n_blocks, BLOCK, -1).sum(axis=0)


def _circular_xcorr(folded: np.ndarray, template: np.ndarray) -> np.ndarray:
    """For every block shift s: sum over cells of folded[(b + s) % BLOCK, f] * template[b, f]."""
    spectrum = fft.rfft(folded, axis=0) * np.conj(fft.rfft(template, axis=0))
    return fft.irfft(spectrum.sum(axis=1), n=BLOCK)


def _sync_z(folded: np.ndarray, pattern: _Pattern) -> np.ndarray:
    """Sync correlation z-score per block shift (N(0, 1) per shift without a watermark)."""
    is_sync = pattern.bit_of_cell < N_SYNC
    template = np.where(is_sync, pattern.chips * pattern.sync[pattern.bit_of_cell % N_SYNC], 0.0)
    num = _circular_xcorr(folded, template)
    den = _circular_xcorr(folded**2, is_sync.astype(np.float32))
    return num / np.sqrt(np.maximum(den, 1e-20))


def _bit_z(aligned: np.ndarray, pattern: _Pattern) -> np.ndarray:
    """Per-bit correlation z-scores of a block-aligned folded residual."""
    idx = pattern.bit_of_cell.ravel()
    num = np.bincount(idx, (aligned * pattern.chips).ravel(), minlength=N_BITS)
    den = np.bincount(idx, (aligned**2).ravel(), minlength=N_BITS)
    return num / np.sqrt(np.maximum(den, 1e-20))


@dataclass
class _Scan:
    """One look at the audio (restored to one speed): per half-hop phase, the residual and its fold."""

    speed: float
    residuals: list[np.ndarray]
    folds: list[np.ndarray]
    scores: np.ndarray  # (2, BLOCK) sync z per phase and shift

    @property
    def best(self) -> float:
        return float(self.scores.max())


def _scan(audio: np.ndarray, pattern: _Pattern, speed: float = 1.0) -> _Scan:
    """Analyse audio at RATE as if restored from a speed change by `speed` (resampled by it: time and
    pitch come back together)."""
    if speed != 1.0:
        audio = soxr.resample(audio.T, RATE, RATE * speed).T
    return _scan_log_power(_log_band_power(np.atleast_2d(audio)), pattern, speed)


def _scan_log_power(log_power: np.ndarray, pattern: _Pattern, speed: float) -> _Scan:
    residuals = [_residual(log_power[phase::2]) for phase in (0, 1)]
    folds = [_fold(r) for r in residuals]
    return _Scan(speed, residuals, folds, np.stack([_sync_z(f, pattern) for f in folds]))


def _excerpt(audio: np.ndarray, seconds: float) -> np.ndarray:
    """The middle `seconds` of (channels, samples) audio at RATE, downmixed (the search only ranks)."""
    n = min(audio.shape[1], round(seconds * RATE))
    start = (audio.shape[1] - n) // 2
    return audio[:, start : start + n].mean(axis=0, keepdims=True)


def _search_speed(audio: np.ndarray, pattern: _Pattern) -> float | None:
    """The speed change the sync responds to best: a fine grid over SPEED_RANGE on the warped band power
    of the middle SEARCH_S (cheap, approximate), then exact resampling around the best few, on longer
    and longer excerpts. None when nothing stands out of the noise."""
    piece = _excerpt(audio, SEARCH_S)
    wide = _band_power(piece, WIDE)
    grid = 1 + np.arange(-SPEED_RANGE, SPEED_RANGE + SPEED_STEP / 2, SPEED_STEP)
    ranked = sorted(((_sync_z(_fold(_residual(_log(_warp(wide, v)))), pattern).max(), v) for v in grid),
                    reverse=True)
    candidates = [v for _, v in ranked[:3]]
    for seconds, step in REFINE:
        piece = _excerpt(audio, seconds)
        grid = sorted({c + k * step for c in candidates for k in (-2, -1, 0, 1, 2)})
        best, speed = max((_scan(piece, pattern, v).best, v) for v in grid)
        candidates = [speed]
        if seconds * RATE >= audio.shape[1]:
            break  # this level saw the whole file
    return float(candidates[0]) if best >= SYNC_Z else None


def _read(scan: _Scan, phase: int, shift: int, pattern: _Pattern, key: bytes) -> tuple[int, float, bool]:
    """(id, confidence, check bits agree) read at one alignment."""
    z = _bit_z(np.roll(scan.folds[phase], -shift, axis=0), pattern)[N_SYNC:]
    bits = (z > 0).astype(np.uint8)
    track_id = int.from_bytes(np.packbits(bits[:N_ID]).tobytes(), "big")
    confidence = float(np.exp(np.sum(special.log_ndtr(np.abs(z)))))
    return track_id, confidence, np.array_equal(bits[N_ID:], _check_bits(track_id, key))


def _spans(scan: _Scan, phase: int, shift: int, track_id: int, key: bytes, pattern: _Pattern,
           seconds: float) -> list[Span]:
    """Where the mark is: the known codeword correlated with the residual in windows of SPAN_S (no search,
    so a lower threshold holds), runs of windows over SPAN_Z merged, in the file's own time."""
    cells = pattern.chips * _codeword(track_id, key).astype(np.float32)[pattern.bit_of_cell]
    residual = scan.residuals[phase]
    template = cells[(np.arange(len(residual)) - shift) % BLOCK]
    frames = max(1, round(SPAN_S * RATE * scan.speed / HOP))
    n = -(-len(residual) // frames)
    pad = n * frames - len(residual)
    num = np.pad((residual * template).sum(axis=1), (0, pad)).reshape(n, frames).sum(axis=1)
    den = np.pad((residual**2).sum(axis=1), (0, pad)).reshape(n, frames).sum(axis=1)
    z = num / np.sqrt(np.maximum(den, 1e-20))
    spans: list[Span] = []
    to_s = HOP / (RATE * scan.speed)
    for w in np.flatnonzero(z >= SPAN_Z):
        start, end = float(w * frames * to_s), float(min((w + 1) * frames * to_s, seconds))
        if spans and abs(spans[-1].end_s - start) < 1e-6:
            spans[-1] = Span(spans[-1].start_s, end, max(spans[-1].z, float(z[w])))
        else:
            spans.append(Span(start, end, float(z[w])))
    return spans


def _marks(scan: _Scan, pattern: _Pattern, key: bytes, seconds: float) -> list[Mark]:
    """Every id whose sync peak clears SYNC_Z and whose check bits agree, strongest first (two songs
    mixed carry their marks at different block phases: the offset is keyed by the id)."""
    marks: list[Mark] = []
    taken: list[tuple[int, int]] = []
    order = np.argsort(scan.scores, axis=None)[::-1]
    for flat in order[: 8 * MAX_MARKS]:
        phase, shift = np.unravel_index(int(flat), scan.scores.shape)
        if scan.scores[phase, shift] < SYNC_Z or len(marks) == MAX_MARKS:
            break
        if any(abs((shift - s + BLOCK // 2) % BLOCK - BLOCK // 2) <= 2 for _, s in taken):
            continue  # the same mark seen one frame or a half-hop away
        track_id, confidence, checked = _read(scan, phase, shift, pattern, key)
        taken.append((phase, shift))
        if checked and all(m.track_id != track_id for m in marks):
            marks.append(Mark(track_id, confidence, float(scan.speed),
                              _spans(scan, phase, shift, track_id, key, pattern, seconds)))
    return marks


def detect(audio: np.ndarray, sr: int, key: bytes) -> Detection:
    """Look for watermarks made with `key` in float audio (channels, samples) at any offset, and if none
    is there as it is, at any speed change within SPEED_RANGE (resampling: time and pitch together)."""
    audio = _resample(np.atleast_2d(np.asarray(audio, dtype=np.float32)), sr, RATE)
    pattern = _pattern(key)
    seconds = audio.shape[1] / RATE
    scan = _scan(audio, pattern)
    marks = _marks(scan, pattern, key, seconds)
    if not marks and seconds >= MIN_SEARCH_S:
        speed = _search_speed(audio, pattern)
        if speed is not None:
            marks = _marks(_scan(audio, pattern, speed), pattern, key, seconds)
    if not marks:
        phase, shift = np.unravel_index(int(np.argmax(scan.scores)), scan.scores.shape)
        return Detection(False, None, _read(scan, phase, shift, pattern, key)[1])
    return Detection(True, marks[0].track_id, marks[0].confidence, marks)
