"""Keyed watermark carrying a 32-bit track id in the log energies of coarse time-frequency cells.

Cells are 128 ms by 1/16 of 250..4000 Hz (log-spaced, ~19 % wide) of the channel mean, so codecs,
low-pass filters and downmixes, which keep band energies, keep the mark. Each of the 48 bits (the id and 16
bits of HMAC(key, id)) owns one column of two cells in a 4.1 s block that repeats, and 2 or 3 2x2
squares of cells in it with keyed signs (+ - / - +): the sum over a square cancels any gain that is static
per band (EQ, low-pass) or common to all bands (fades, compressors). The bit is written by spread-transform
dither modulation: the signed sum of its cells' dB is moved towards the keyed lattice point of its value,
so the music itself does not interfere with decoding (as it does with additive spread spectrum); only the
attack's change of those energies does. The `Lattice` sets the step and how much of the way the sum is
moved. Changes go preferably to the cells that cost least mark power (quiet relative to their column), each
at most MAX_CELL_DB, and the mark is scaled down in any 1 s window where it would be less than GUARD_DB
under the music.

Detection: cell energies at every frame offset, each bit's lattice phase cos(2 pi u) summed over its
repetitions, a chi-square over the 48 bits per block phase (no sync bits: any phase where every bit sits on
its lattice stands out), then the check bits must agree, or at a strong sync one of a few flips of the least
reliable bits must (Chase decoding). Each cos is taken less its local mean and in units of its spread, so
silence, fades and steady sounds (where u sits still) do not pass for a sync; a phase whose sin(2 pi u) agrees
as much is not read, for the mark of another key repeats with the block too, but off this key's lattice.
Files of MIN_SEARCH_S or more where nothing is found are searched for a speed change (resampling: time and
frequency scale together) within SPEED_RANGE. Marks on the previous
lattice and marks from the first scheme (`watermark_v1`) are still read.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import soxr
from scipy import special

from longsong.audio import watermark_v1
from longsong.audio.watermark_cells import (CELL, EDGES, FLOOR, HOP, N_BANDS, RATE, band_frames, cell_db,
                                             istft, mid_power, stft)
from longsong.audio.watermark_v1 import Detection, Mark, Span, _check_bits, _resample  # shared by both schemes

COLS = 16  # columns of two cells in a block
BLOCK = COLS * 2 * CELL  # frames per repetition (4.1 s)
N_ID, N_CHECK = 32, 16
N_BITS = N_ID + N_CHECK
LAMBDA = 0.1  # cost of a dB in a cell: its energy relative to its column's mean + LAMBDA
MAX_CELL_DB = 2.5
PASSES = 4  # adjust towards the targets; the STFT smears a little, so the last pass measures resynthesised audio
GUARD_DB = -31.0
SYNC_Z = 4.0  # at the file's own speed: 512 phases tried, then 16 check bits
LIST_Z, LIST_BITS, LIST_MAX = 5.0, 10, 64  # Chase decoding: the sync it needs, bits it may flip, candidates
CLIP = 3.0  # the most that one position may weigh, in spreads
SINE_SHARE = 1 / 3  # a phase is read only if its sine z is under this share of its cosine z (see _marks)
LIST_Z_MORE = 8.0  # the sync a scan's second and third mark need for it (a mix of two marked songs)
SEARCH_Z = 5.5  # under the speed search (thousands of tries)
MAX_MARKS = 3
SPAN_S, SPAN_Z = 5.0, 3.0  # localisation windows and the agreement they need
SPEED_RANGE, SPEED_STEP, SEARCH_S, MIN_SEARCH_S = 0.022, 0.002, 24.0, 8.0
REFINE = (0.0005, 0.0002)
READ_S = 60.0  # the refinement and the first read use the middle minute
_FLIPS = ((np.arange(1, 2**LIST_BITS)[:, None] >> np.arange(LIST_BITS)) & 1).astype(bool)  # every subset


@dataclass(frozen=True)
class Lattice:
    """How far a bit's projection is moved: the lattice step per sqrt(cell), dB, and the share of the way to
    the lattice point (distortion compensation: below 1, a wider step at the same power)."""

    step_db: float
    alpha: float


LATTICE = Lattice(1.4, 1.0)  # what `embed` writes since 2026-12-07: Opus 32k, noise and mixes keep more bits
READ = (LATTICE, Lattice(1.0, 0.8))  # what `detect` reads: the current lattice, then the one before


@dataclass(frozen=True)
class _Layout:
    """Every cell of the block: its bit, time cell in the bit's column (0/1), band and sign."""

    bit: np.ndarray
    dcell: np.ndarray
    band: np.ndarray
    sign: np.ndarray
    col: np.ndarray  # (N_BITS,) column of each bit
    n_cells: np.ndarray  # (N_BITS,)
    step: np.ndarray  # (N_BITS,) lattice step, dB
    dither: np.ndarray  # (N_BITS,) lattice offset, in steps


@lru_cache(maxsize=8)
def _layout(key: bytes, step_db: float = LATTICE.step_db) -> _Layout:
    seed = hashlib.sha256(b"longsong-watermark-stdm\0" + key).digest()
    rng = np.random.default_rng(np.frombuffer(seed, dtype=np.uint64))
    col = np.repeat(np.arange(COLS), N_BITS // COLS)[rng.permutation(N_BITS)]
    rows = []
    for c in range(COLS):  # the column's 8 band pairs shared 3/3/2 among its 3 bits
        owners = np.resize(np.flatnonzero(col == c), N_BANDS // 2)
        for pair, bit in zip(rng.permutation(N_BANDS // 2), owners):
            s = rng.choice([-1.0, 1.0])
            rows += [(bit, dc, 2 * pair + db, s * sg) for dc, db, sg in ((0, 0, 1), (0, 1, -1), (1, 0, -1), (1, 1, 1))]
    bit, dcell, band, sign = (np.array(v) for v in zip(*rows))
    n_cells = np.bincount(bit, minlength=N_BITS)
    return _Layout(bit, dcell, band, sign.astype(np.float64), col, n_cells, step_db * np.sqrt(n_cells),
                   rng.random(N_BITS))


def _bits(track_id: int, key: bytes) -> np.ndarray:
    id_bits = np.unpackbits(np.frombuffer(track_id.to_bytes(4, "big"), dtype=np.uint8))
    return np.concatenate([id_bits, _check_bits(track_id, key)])


def _block_offset(track_id: int, key: bytes) -> int:
    """Where the block starts, keyed by the id: two songs mixed from the same start keep their phases apart."""
    mac = hmac.new(key, b"longsong-watermark-offset\0" + track_id.to_bytes(4, "big"), hashlib.sha256)
    return int.from_bytes(mac.digest()[:2], "big") % BLOCK


def _projections(db: np.ndarray, lay: _Layout) -> np.ndarray:
    """(N_BITS, positions): each bit's signed cell sum / sqrt(cells) were its column to start there."""
    n = len(db) - 2 * CELL + 1
    if n <= 0:
        return np.zeros((N_BITS, 0))
    vals = db[lay.dcell[:, None] * CELL + np.arange(n), lay.band[:, None]] * lay.sign[:, None]
    out = np.zeros((N_BITS, n))
    np.add.at(out, lay.bit, vals)
    return out / np.sqrt(lay.n_cells)[:, None]


def _guard(mark: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """The mark scaled down in any 1 s window (every 0.5 s) where it is above GUARD_DB re the music. Each half
    second gets the lower gain of its two windows, and the gain between half-second centres is interpolated
    from values no higher than either neighbour's, so no sample of a window gets more than the window allows."""
    half, n = RATE // 2, audio.shape[1]
    k = -(-n // half)
    pm, pa = (np.pad(np.square(x).sum(axis=0), (0, k * half - n)).reshape(k, half).sum(axis=1) for x in (mark, audio))
    window = lambda p: p + np.append(p[1:], 0.0)  # noqa: E731  (window w: halves w and w + 1)
    ratio = np.minimum(1.0, np.sqrt(10 ** (GUARD_DB / 10) * window(pa) / np.maximum(window(pm), 1e-30)))
    gain = np.minimum(ratio, np.append(1.0, ratio[:-1]))  # half k lies in windows k - 1 and k
    centre = np.minimum(gain, np.minimum(np.append(gain[:1], gain[:-1]), np.append(gain[1:], gain[-1:])))
    return mark * np.interp(np.arange(n), np.arange(k) * half + half / 2, centre).astype(np.float32)


def embed(audio: np.ndarray, sr: int, track_id: int, key: bytes,
          progress: Callable[[], None] | None = None, lattice: Lattice = LATTICE) -> np.ndarray:
    """Watermarked copy of float audio (channels, samples) carrying the 32-bit `track_id`; `progress` is
    called after each pass (a few seconds for a long song: the CPU worker heartbeats from it). `lattice`:
    only tests write an older one, to check that it is still read."""
    if not 0 <= track_id < 2**32:
        raise ValueError(f"track_id must fit in 32 bits, got {track_id}")
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    x = _resample(audio, sr, RATE)
    lay, bits = _layout(key, lattice.step_db), _bits(track_id, key)
    spec = stft(x)
    n_frames, n_bins = spec.shape[1:]
    band_of_bin = np.searchsorted(np.ceil(EDGES), np.arange(n_bins), side="right") - 1
    in_band = (band_of_bin >= 0) & (band_of_bin < N_BANDS)
    # every repetition of every bit that fits: (instance, cell) arrays
    starts = _block_offset(track_id, key) + BLOCK * np.arange(-1, n_frames // BLOCK + 1)[:, None] + 2 * CELL * lay.col
    inst_bit = np.broadcast_to(np.arange(N_BITS), starts.shape)
    ok = (starts >= 0) & (starts + 2 * CELL <= n_frames)
    starts, inst_bit = starts[ok], inst_bit[ok]
    cells = [np.flatnonzero(lay.bit == j) for j in range(N_BITS)]
    inst = np.concatenate([np.full(len(cells[j]), i) for i, j in enumerate(inst_bit)])
    cell = np.concatenate([cells[j] for j in inst_bit])
    t, b, s = starts[inst] + lay.dcell[cell] * CELL, lay.band[cell], lay.sign[cell]
    root = np.sqrt(lay.n_cells[inst_bit])
    gain_db, target = np.zeros((n_frames, N_BANDS)), None
    mid = spec.mean(axis=0)
    power_0 = mid.real**2 + mid.imag**2
    mask = np.ones((n_frames, n_bins), np.float32)
    for k in range(PASSES):
        if progress is not None:
            progress()
        if k < PASSES - 1:  # the STFT domain as it would be (cheap); the last pass re-analyses the audio
            power = power_0.copy()
            power[:, in_band] *= 10 ** (gain_db[:, band_of_bin[in_band]] / 10)
        else:
            y = istft(spec * mask, x.shape[1])
            power = mid_power(y)[:n_frames]
        bands = band_frames(power)
        cum = np.concatenate([np.zeros((1, N_BANDS)), np.cumsum(bands, axis=0)])
        cell_e = cum[CELL:] - cum[:-CELL]
        e = cum[t + CELL, b] - cum[t, b]
        floor = FLOOR * float(cell_e.mean())
        w = e / (e + floor + 1e-30)  # how much a dB of gain moves the cell's dB
        p = np.bincount(inst, s * 10 * np.log10(e + floor + 1e-30), minlength=len(starts)) / root
        if target is None:  # alpha of the way to the bit's nearest lattice point
            step = lay.step[inst_bit]
            u = p / step - lay.dither[inst_bit] - 0.5 * bits[inst_bit]
            target = p - lattice.alpha * (u - np.round(u)) * step
        cost = e / np.maximum(cell_e[t].mean(axis=1), 1e-30) + LAMBDA
        norm = np.bincount(inst, w**2 / cost, minlength=len(starts))
        move = (target - p) * root / np.maximum(norm, 1e-9)
        change = np.zeros((n_frames + 1, N_BANDS))
        np.add.at(change, (t, b), s * w / cost * move[inst])
        np.add.at(change, (np.minimum(t + CELL, n_frames), b), -s * w / cost * move[inst])
        gain_db = np.clip(gain_db + np.cumsum(change, axis=0)[:n_frames], -MAX_CELL_DB, MAX_CELL_DB)
        mask[:, in_band] = 10 ** (gain_db[:, band_of_bin[in_band]] / 20)
    y = istft(spec * mask, x.shape[1])
    mark = _resample(_guard(y - x, x), RATE, sr)[:, : audio.shape[1]]
    return (audio + mark).astype(np.float32)


@dataclass
class _Scan:
    """One look at the audio at one speed: per bit and block phase, the lattice agreement and its spread."""

    speed: float
    agree: np.ndarray  # (N_BITS, positions) cos(2 pi u), less its mean over a block around, in spreads
    soft: np.ndarray  # (N_BITS, BLOCK) sum of `agree` over the repetitions
    spread: np.ndarray  # (N_BITS, BLOCK) the standard deviation of that sum without a mark
    chi2: np.ndarray  # (BLOCK,) sum of (soft / spread)^2 per block phase: chi-square, N_BITS degrees
    z: np.ndarray  # (BLOCK,) the same, standardised
    sine_z: np.ndarray  # (BLOCK,) the same z of the sines of 2 pi u


def _scan(db: np.ndarray, lay: _Layout, speed: float) -> _Scan | None:
    p = _projections(db, lay)
    n = p.shape[1]
    if n == 0:
        return None
    # Without a mark the lattice phase u is uniform only where the projections vary: silence, a fade or a
    # steady sound hold each bit's u near its dither at every position, and every block phase would agree.
    # So each bit's cos (and sin) of 2 pi u is taken less its mean over the block around it (one repetition),
    # in units of its spread over all positions.
    angle = 2 * np.pi * (p / lay.step[:, None] - lay.dither[:, None])
    trig = np.stack([np.cos(angle), np.sin(angle)])
    cum = np.concatenate([np.zeros((2, N_BITS, 1)), np.cumsum(trig, axis=2)], axis=2)
    lo, hi = np.maximum(np.arange(n) - BLOCK // 2, 0), np.minimum(np.arange(n) + BLOCK // 2, n)
    trig -= (cum[:, :, hi] - cum[:, :, lo]) / (hi - lo)
    trig /= np.sqrt(np.maximum(trig.var(axis=2, keepdims=True), 1e-3))
    trig = np.clip(trig, -CLIP, CLIP)  # one odd frame (the file's edge) of a still sound
    pad = (-n) % BLOCK
    folded = np.pad(trig, ((0, 0), (0, 0), (0, pad))).reshape(2, N_BITS, -1, BLOCK).sum(axis=2)
    counts = np.pad(np.ones(n), (0, pad)).reshape(-1, BLOCK).sum(axis=0)
    idx = (np.arange(BLOCK) + 2 * CELL * lay.col[:, None]) % BLOCK  # bit j's column at block phase ph
    count = np.maximum(counts[idx], 1)
    sums, spread = folded[:, np.arange(N_BITS)[:, None], idx], np.sqrt(count)
    chi2 = (sums**2 / count).sum(axis=1)
    # a square has mean 1 and, were u uniform (cos and sin arcsine-distributed), variance 2 - 1.5 / M
    z = (chi2 - N_BITS) / np.sqrt((2 - 1.5 / count).sum(axis=0))
    return _Scan(speed, trig[0], sums[0], spread, chi2[0], z[0], z[1])


def _spans(scan: _Scan, phase: int, bits: np.ndarray, lay: _Layout, seconds: float) -> list[Span]:
    """Where the mark is: agreement of every repetition with the read bits, in windows of SPAN_S."""
    n = scan.agree.shape[1]
    pos = phase + 2 * CELL * lay.col[:, None] + BLOCK * np.arange(-1, n // BLOCK + 2)
    j = np.broadcast_to(np.arange(N_BITS)[:, None], pos.shape)
    ok = (pos >= 0) & (pos < n)
    pos, j = pos[ok], j[ok]
    agree = scan.agree[j, pos] * (1.0 - 2.0 * bits[j])
    to_s = HOP / (RATE * scan.speed)
    window = np.floor((pos + CELL) * to_s / SPAN_S).astype(np.int64)
    n_win = int(window.max()) + 1 if window.size else 0
    z = np.bincount(window, agree, n_win) / np.sqrt(np.maximum(np.bincount(window, minlength=n_win), 1e-9))
    spans: list[Span] = []
    for k in np.flatnonzero(z >= SPAN_Z):
        start, end = float(k * SPAN_S), float(min((k + 1) * SPAN_S, seconds))
        if spans and abs(spans[-1].end_s - start) < 1e-6:
            spans[-1] = Span(spans[-1].start_s, end, max(spans[-1].z, float(z[k])))
        else:
            spans.append(Span(start, end, float(z[k])))
    return spans


def _id_of(bits: np.ndarray, key: bytes) -> int | None:
    track_id = int.from_bytes(np.packbits(bits[:N_ID]).tobytes(), "big")
    return track_id if np.array_equal(bits[N_ID:], _check_bits(track_id, key)) else None


def _decode(soft: np.ndarray, spread: np.ndarray, z: float, key: bytes, chase: bool) -> tuple[np.ndarray, int, int] | None:
    """(bits, id, candidates tried) of one block phase: the bits as read if their check agrees; else, with `chase`
    and a strong sync (LIST_Z), Chase decoding: the LIST_MAX likeliest flips of the LIST_BITS least reliable
    bits (smallest sum of flipped reliabilities first), accepted only when exactly one agrees. A strong mark
    loses a few bits to a codec or noise, nearly always among the least reliable; each candidate adds 2^-16 of
    chance that a wrong id agrees, so only LIST_MAX are tried."""
    hard = (soft < 0).astype(np.uint8)
    track_id = _id_of(hard, key)
    if track_id is not None:
        return hard, track_id, 1
    if not chase or z < LIST_Z:
        return None
    rel = np.abs(soft) / spread
    weak = np.argsort(rel)[:LIST_BITS]
    masks = _FLIPS[np.argsort(_FLIPS @ rel[weak], kind="stable")[:LIST_MAX]]
    hits = []
    for mask in masks:
        bits = hard.copy()
        bits[weak[mask]] ^= 1
        if (found := _id_of(bits, key)) is not None:
            hits.append((bits, found))
    return (*hits[0], 1 + len(masks)) if len(hits) == 1 else None


def _marks(scan: _Scan | None, lay: _Layout, key: bytes, seconds: float, z_min: float, tries: int,
           marks: list[Mark], chase: bool) -> None:
    """Add every id whose sync clears z_min and whose check bits agree (strongest phase first; with `chase`,
    the strongest, and any other of LIST_Z_MORE, is Chase-decoded if its check fails)."""
    if scan is None:
        return
    taken: list[int] = []
    for phase in np.argsort(scan.z)[::-1][: 4 * MAX_MARKS]:
        if scan.z[phase] < z_min or len(marks) >= MAX_MARKS:
            return
        if any(abs((phase - t + BLOCK // 2) % BLOCK - BLOCK // 2) <= CELL // 2 for t in taken):
            continue  # the same mark a frame or two away
        if scan.sine_z[phase] >= SINE_SHARE * scan.z[phase]:
            continue  # not on the lattice: another key's mark, or music that repeats with the block
        taken.append(int(phase))
        z = float(scan.z[phase])
        read = _decode(scan.soft[:, phase], scan.spread[:, phase], z, key, chase and (len(taken) == 1 or z >= LIST_Z_MORE))
        if read is None:
            continue
        bits, track_id, candidates = read
        if all(m.track_id != track_id for m in marks):
            chance = tries * special.chdtrc(N_BITS, scan.chi2[phase]) * candidates * 2.0**-N_CHECK
            marks.append(Mark(track_id, float(1 - chance), scan.speed, _spans(scan, int(phase), bits, lay, seconds)))


def _middle(audio: np.ndarray, seconds: float) -> np.ndarray:
    n = min(audio.shape[1], round(seconds * RATE))
    start = (audio.shape[1] - n) // 2
    return audio[:, start : start + n]


def _search_speed(audio: np.ndarray, lay: _Layout, key: bytes, marks: list[Mark]) -> None:
    """Undo a speed change v (time / v, frequencies * v) on a grid over SPEED_RANGE on the middle SEARCH_S,
    then finer steps around the best few on the middle READ_S, read there from the audio resampled for real."""
    def ranked(power: np.ndarray, speeds, keep: int) -> list[float]:
        scores = [(s.z.max(), float(v)) for v in speeds if (s := _scan(cell_db(band_frames(power, v), 1 / v), lay, v))]
        return [v for _, v in sorted(scores, reverse=True)[:keep]]

    grid = 1 + np.arange(-SPEED_RANGE, SPEED_RANGE + SPEED_STEP / 2, SPEED_STEP)
    candidates = ranked(mid_power(_middle(audio, SEARCH_S)), grid, 3)
    piece = _middle(audio, READ_S)
    power = mid_power(piece)
    for step in REFINE:
        candidates = ranked(power, {c + k * step for c in candidates for k in (-2, -1, 0, 1, 2)}, 2)
    tries = BLOCK * len(READ) * (len(grid) + 5 * len(REFINE) * 3)
    for v in candidates:  # the approximation ranks; the bits are read from the audio resampled for real
        found: list[Mark] = []
        _look(soxr.resample(piece.T, RATE, RATE * v).T, [lay], key, v, SEARCH_Z, tries, found)
        if found:
            if piece.shape[1] < audio.shape[1]:  # the whole file too, for spans over all of it
                _look(soxr.resample(audio.T, RATE, RATE * v).T, [lay], key, v, SEARCH_Z, tries, marks)
            if not marks:
                at = (audio.shape[1] - piece.shape[1]) / 2 / RATE
                marks.extend(replace(m, spans=[Span(s.start_s + at, s.end_s + at, s.z) for s in m.spans]) for m in found)
            return


def _look(audio: np.ndarray, lays: list[_Layout], key: bytes, speed: float, z_min: float, tries: int,
          marks: list[Mark], chase: bool = False) -> None:
    """Marks in audio at RATE as it is, on frames half a hop apart (one of them lines up with the cells), on
    each layout (the lattices of READ share the cells)."""
    for shift in (0, HOP // 2):
        db = cell_db(band_frames(mid_power(audio[:, shift:])))
        for lay in lays:
            _marks(_scan(db, lay, speed), lay, key, audio.shape[1] / RATE / speed, z_min, 2 * tries, marks, chase)
            if marks:
                return


def detect(audio: np.ndarray, sr: int, key: bytes) -> Detection:
    """Look for watermarks made with `key` in float audio (channels, samples) at any offset, on every lattice
    of READ, and if none is there as it is, at any speed change within SPEED_RANGE; then for marks of the
    first scheme."""
    audio = _resample(np.atleast_2d(np.asarray(audio, dtype=np.float32)), sr, RATE)
    lays, seconds, marks = [_layout(key, lattice.step_db) for lattice in READ], audio.shape[1] / RATE, []
    _look(audio, lays, key, 1.0, SYNC_Z, BLOCK * len(lays), marks, chase=True)
    for lay in lays:
        if not marks and seconds >= MIN_SEARCH_S:
            _search_speed(audio, lay, key, marks)
    if not marks:
        marks = watermark_v1.detect(audio, RATE, key).marks
    if not marks:
        return Detection(False, None, 0.0)
    return Detection(True, marks[0].track_id, marks[0].confidence, marks)
