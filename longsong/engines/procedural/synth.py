"""Sound generation: wavetables, timbres, note voices and envelopes, the drum kit, the reverb."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from longsong.engines.procedural.song import SR

TABLE_BITS = 13  # wavetables of 8192 samples, read without interpolation (> 50 dB SNR)
TABLE = 2**TABLE_BITS
REVERB_DECIMATION = 4  # the reverb runs at SR / 4 (upsample4 interpolates back)
REVERB_PAD = int(1.5 * SR)  # reverb tail length = dry look-back before the window
MAX_TAIL_S = 3.0  # longest ring-out of a note after its bar (release, crash)
ROLE_PAN = {"bass": 0.0, "pad": 0.0, "lead": 0.15, "arp": -0.35}
DRAWBARS = {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.5, 6: 0.3, 8: 0.3}  # organ partial levels
SUB = {1: 1.0, 2: 0.3, 3: 0.08}  # sub bass partial levels


@dataclass(frozen=True)
class Timbre:
    shape: str  # wavetable: sine, sub, saw, square, tri, organ, piano
    bright: int  # partials at the note's start
    dark: int  # partials it settles to: a filter envelope by cross-fading two tables
    tone_decay: float  # seconds for the brightness (or FM index) to fall
    attack: float
    decay: float  # amplitude decay time constant, seconds
    sustain: float  # level the decay settles to
    release: float
    spread: float = 0.0  # cents of detune between left and right (0: mono, panned)
    vibrato: float = 0.0  # depth in cents, 5 Hz, fading in after 0.2 s
    fm: float = 0.0  # FM index at the onset (sine carrier and modulator, ratio 1); 0: wavetable


TIMBRES = {
    "bass:sub": Timbre("sub", 3, 3, 0.1, 0.004, math.inf, 1.0, 0.06),
    "bass:saw": Timbre("saw", 32, 5, 0.12, 0.003, 0.4, 0.7, 0.05),
    "bass:square": Timbre("square", 24, 5, 0.1, 0.003, 0.5, 0.7, 0.05),
    "bass:fm": Timbre("sine", 1, 1, 0.15, 0.003, 0.5, 0.6, 0.05, fm=2.5),
    "bass:pluck": Timbre("saw", 24, 4, 0.06, 0.003, 0.35, 0.3, 0.06),
    "bass:upright": Timbre("saw", 8, 2, 0.04, 0.004, 0.3, 0.3, 0.07),
    "lead:saw": Timbre("saw", 48, 14, 0.4, 0.01, 0.6, 0.75, 0.15, spread=14, vibrato=12),
    "lead:square": Timbre("square", 32, 10, 0.3, 0.008, 0.5, 0.7, 0.12, vibrato=10),
    "lead:pluck": Timbre("saw", 32, 3, 0.12, 0.003, 0.3, 0.0, 0.12),
    "lead:fm": Timbre("sine", 1, 1, 0.35, 0.004, 0.8, 0.15, 0.25, fm=1.8),
    "lead:sine": Timbre("tri", 4, 2, 0.5, 0.04, 1.0, 0.85, 0.15, vibrato=15),
    "lead:piano": Timbre("piano", 16, 3, 0.3, 0.003, 0.9, 0.0, 0.25),
    "pad:strings": Timbre("saw", 12, 12, 1.0, 0.35, 2.0, 0.8, 0.7, spread=12),
    "pad:warm": Timbre("tri", 6, 6, 1.0, 0.25, 2.0, 0.8, 0.6, spread=10),
    "pad:organ": Timbre("organ", 16, 16, 1.0, 0.01, math.inf, 1.0, 0.08, spread=6),
    "pad:piano": Timbre("piano", 12, 3, 0.4, 0.003, 1.2, 0.0, 0.4, spread=4),
    "pad:epiano": Timbre("sine", 1, 1, 0.3, 0.003, 1.0, 0.25, 0.2, spread=5, fm=1.1),
    "arp:pluck": Timbre("saw", 24, 3, 0.08, 0.002, 0.18, 0.0, 0.08),
    "arp:fm": Timbre("sine", 1, 1, 0.2, 0.002, 0.4, 0.0, 0.1, fm=2.0),
    "arp:piano": Timbre("piano", 12, 3, 0.2, 0.003, 0.5, 0.0, 0.15),
}


def partials(shape: str, n: int) -> np.ndarray:
    """Amplitudes of partials 1..n (sine phase) for each wavetable shape."""
    k = np.arange(1, n + 1, dtype=np.float64)
    odd = k % 2 == 1
    if shape in ("organ", "sub"):
        levels = DRAWBARS if shape == "organ" else SUB
        return np.array([levels.get(i, 0.0) for i in range(1, n + 1)])
    return {
        "sine": (k == 1) * 1.0,
        "saw": 1 / k,
        "square": odd / k,
        "tri": odd * (-1.0) ** ((k - 1) // 2) / k**2,
        "piano": k**-1.4 * (1 + 0.5 * (k == 2)),
    }[shape]


@lru_cache(maxsize=256)
def wavetable(shape: str, n: int) -> np.ndarray:
    """One band-limited cycle of `shape` with partials 1..n."""
    spec = np.zeros(TABLE // 2 + 1, dtype=np.complex128)
    spec[1:n + 1] = -0.5j * TABLE * partials(shape, n)
    cycle = np.fft.irfft(spec, TABLE)
    cycle /= np.abs(cycle).max()
    return cycle.astype(np.float32)


def band_limit(shape: str, wanted: int, freq: float) -> np.ndarray:
    """The table with at most `wanted` partials and none above 0.45 * SR (a power of two, cached)."""
    limit = max(1, int(0.45 * SR / freq))
    return wavetable(shape, min(wanted, 2 ** int(math.log2(limit))))


def seconds(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(SR)


def phase(tb: Timbre, freq: float, n: int) -> np.ndarray:
    """Oscillator phase from the onset as uint32 fixed point (one cycle = 2**32, wraps for free)."""
    step = freq * 2**32 / SR
    if not tb.vibrato:
        return np.arange(n, dtype=np.uint32) * np.uint32(round(step))
    t = np.arange(n) / SR
    depth = 2 ** (tb.vibrato / 1200) - 1
    inc = np.rint(step * (1 + depth * np.clip((t - 0.2) / 0.3, 0, 1) * np.sin(2 * np.pi * 5.0 * t)))
    inc[0] = 0  # phase 0 at the onset
    return np.cumsum(inc.astype(np.uint32), dtype=np.uint32)


def lookup(table: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """Nearest-sample wavetable read: the top TABLE_BITS of the phase index the table."""
    return table[ph >> np.uint32(32 - TABLE_BITS)]


def voice(tb: Timbre, freq: float, n: int, fall: np.ndarray | None) -> np.ndarray:
    """One oscillator: wavetable with a brightness envelope `fall`, or two-operator FM."""
    ph = phase(tb, freq, n)
    if tb.fm:
        carrier = ph.astype(np.float32) * np.float32(2 * np.pi / 2**32)
        return np.sin(carrier + tb.fm * (0.25 + 0.75 * fall) * np.sin(carrier))
    dark = lookup(band_limit(tb.shape, tb.dark, freq), ph)
    if fall is None:
        return dark
    return dark + fall * (lookup(band_limit(tb.shape, tb.bright, freq), ph) - dark)


def envelope(tb: Timbre, gate: int, t: np.ndarray) -> np.ndarray:
    """Attack ramp, decay to sustain, squared linear release ending exactly at zero (no clicks)."""
    env = np.ones_like(t) if math.isinf(tb.decay) else tb.sustain + (1 - tb.sustain) * np.exp(-t / tb.decay)
    rise = min(t.size, math.ceil(tb.attack * SR))
    env[:rise] *= t[:rise] / tb.attack
    env[gate:] *= np.clip(1 - (t[gate:] - gate / SR) / tb.release, 0, 1) ** 2
    return env


def pan_gains(pan: float) -> np.ndarray:
    angle = (pan + 1) * math.pi / 4
    return (np.array([[math.cos(angle)], [math.sin(angle)]]) * math.sqrt(2)).astype(np.float32)


def render_note(role: str, instrument: str, pitches: tuple[int, ...], gate: int) -> np.ndarray:
    """A whole note (or chord), stereo float32, from its onset through its release."""
    tb = TIMBRES[f"{role}:{instrument}"]
    n = gate + int(tb.release * SR)
    t = seconds(n)
    fall = np.exp(-t / tb.tone_decay) if tb.fm or tb.bright != tb.dark else None
    env = envelope(tb, gate, t)
    freqs = [440.0 * 2 ** ((m - 69) / 12) for m in pitches]
    if tb.spread:
        return np.stack([sum(voice(tb, f * 2 ** (c / 2400), n, fall) for f in freqs) * env
                         for c in (-tb.spread, tb.spread)])
    return pan_gains(ROLE_PAN[role]) * (sum(voice(tb, f, n, fall) for f in freqs) * env)


def decaying(t: np.ndarray, tau: float, length: float) -> np.ndarray:
    """Exponential decay with a 1 ms attack and a 10 ms fade to zero at `length` seconds."""
    return np.minimum(1, t / 0.001) * np.exp(-t / tau) * np.clip((length - t) / 0.01, 0, 1)


def filtered(noise: np.ndarray, kind: str, cutoff: float | tuple[float, float]) -> np.ndarray:
    return signal.sosfilt(signal.butter(4, cutoff, kind, fs=SR, output="sos"), noise)


def ride(t: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A ride cymbal: a long high hiss with a faint inharmonic ping above the keys' range, so the swing
    pattern reads without adding pitches that are not in the song's key."""
    ping = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((3130, 0.3), (4370, 0.25), (6150, 0.2)))
    return ping * decaying(t, 0.2, 1.2) + filtered(noise, "highpass", 5000) * decaying(t, 0.4, 1.2)


@lru_cache(maxsize=12)
def toms(tonic: int) -> dict[str, np.ndarray]:
    """Three toms tuned to the song's tonic, fourth and octave (pitched drums in the key), each a sine
    falling from 1.6x to its pitch with a little stick noise."""
    t = np.arange(int(0.6 * SR)) / SR
    noise = np.random.default_rng(13).standard_normal(t.size)
    low = 43 + (tonic - 43) % 12  # G2..F#3
    out = {}
    for name, midi, pan in (("tom_lo", low, 0.3), ("tom_mid", low + 5, 0.05), ("tom_hi", low + 12, -0.2)):
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        sweep = np.cumsum(freq * (1 + 0.6 * np.exp(-t / 0.03))) / SR
        x = np.sin(2 * np.pi * sweep) * decaying(t, 0.2, 0.6) + 0.2 * noise * decaying(t, 0.004, 0.03)
        out[name] = pan_gains(pan) * (x / np.abs(x).max()).astype(np.float32)
    return out


@lru_cache(maxsize=1)
def drum_kit() -> dict[str, np.ndarray]:
    """Synthesized one-shots (fixed noise seed): kick sweep, snare tone + noise, clap bursts, hats, rim,
    ride (the toms depend on the key: `toms`)."""
    rng = np.random.default_rng(7)
    t = np.arange(int(2.5 * SR)) / SR
    noise = rng.standard_normal((2, t.size))
    sweep = np.cumsum(45 + 110 * np.exp(-t / 0.035)) / SR
    kick = np.sin(2 * np.pi * sweep) * decaying(t, 0.28, 0.5) + 0.2 * noise[0] * decaying(t, 0.003, 0.02)
    snare = (0.6 * np.sin(2 * np.pi * 185 * t) * decaying(t, 0.05, 0.35)
             + filtered(noise[0], "bandpass", (1200, 9000)) * decaying(t, 0.11, 0.35))
    bursts = sum(decaying(np.maximum(t - d, 0), 0.008, 0.3) * (t >= d) for d in (0.0, 0.011, 0.023))
    clap = filtered(noise[1], "bandpass", (900, 3500)) * (bursts + 0.6 * decaying(t, 0.13, 0.4) * (t >= 0.023))
    hat = filtered(noise[0], "highpass", 7000)
    shaker = filtered(noise[1], "bandpass", (4500, 10000)) * np.minimum(1, t / 0.012)
    crash = np.stack([filtered(n, "highpass", 3500) for n in noise])
    rim = filtered(noise[1], "bandpass", (1500, 7000)) * decaying(t, 0.012, 0.08)
    kit = {  # name: (mono one-shot, pan)
        "kick": (kick[: int(0.5 * SR)], 0.0), "snare": (snare[: int(0.35 * SR)], 0.0),
        "clap": (clap[: int(0.4 * SR)], 0.0), "hat": ((hat * decaying(t, 0.03, 0.12))[: int(0.12 * SR)], 0.25),
        "open": ((hat * decaying(t, 0.22, 0.5))[: int(0.5 * SR)], 0.25),
        "pedal": ((hat * decaying(t, 0.012, 0.06))[: int(0.06 * SR)], 0.25),
        "shaker": ((shaker * decaying(t, 0.04, 0.1))[: int(0.1 * SR)], -0.3),
        "rim": (rim[: int(0.08 * SR)], 0.05),
        "ride": (ride(t, noise[1])[: int(1.2 * SR)], -0.25),
    }
    out = {name: pan_gains(pan) * (x / np.abs(x).max()).astype(np.float32) for name, (x, pan) in kit.items()}
    out["crash"] = (crash * decaying(t, 0.8, 2.5) / np.abs(crash).max()).astype(np.float32)
    return out


@lru_cache(maxsize=1)
def reverb_ir() -> np.ndarray:
    """Stereo decaying-noise impulse response at SR / REVERB_DECIMATION (RT60 about 1.6 s)."""
    rate = SR // REVERB_DECIMATION
    t = np.arange(REVERB_PAD // REVERB_DECIMATION) / rate
    noise = np.random.default_rng(11).standard_normal((2, t.size))
    ir = noise * np.exp(-t / 0.23) * np.clip((t - 0.012) / 0.02, 0, 1)
    return (ir / np.sqrt((ir**2).sum(axis=1, keepdims=True))).astype(np.float32)


def reverb(send: np.ndarray, first: int, count: int) -> np.ndarray:
    """Convolution reverb at a quarter rate: 4-sample block means (the bus starts on an absolute
    multiple of 4, so blocks never depend on the window), output for blocks [first, first+count)."""
    blocks = send.reshape(2, -1, REVERB_DECIMATION).mean(axis=2)
    wet = signal.fftconvolve(blocks, reverb_ir(), axes=1)[:, : blocks.shape[1]]
    return upsample4(wet, first, count)


def upsample4(w: np.ndarray, first: int, count: int) -> np.ndarray:
    """Linear interpolation between block centres (at 4m + 1.5): sample 4m + r mixes its block
    with the previous (r < 2) or next (r >= 2) one."""
    prev, cur, nxt = (w[:, first + d:first + count + d] for d in (-1, 0, 1))
    out = np.stack([0.375 * prev + 0.625 * cur, 0.125 * prev + 0.875 * cur,
                    0.875 * cur + 0.125 * nxt, 0.625 * cur + 0.375 * nxt], axis=-1)
    return out.reshape(2, -1)
