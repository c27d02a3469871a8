"""Faults on demand, for tests: the defects a quality gate must catch, injected into chosen windows.

Each transform changes only a window's new part (after the re-generated context), so the seam with
the previous window still matches and only the gate, not the assembly, can notice. `FaultyEngine`
is built in code only (tests hand an `EngineRegistry([FaultyEngine(...)])` to workers): no request
field or setting reaches it.
"""

from __future__ import annotations

import numpy as np

from longsong.engines.base import Engine, StepCallback, WindowRequest, WindowResult
from longsong.frames import FRAME_RATE

TEMPO_RATE = 1.25  # a jump a listener hears at once (110 -> 137.5 bpm)
KEY_STEPS = 6  # a tritone: the farthest key, sharing almost no scale notes with the original
LOOP_S = 1.5  # the stretch a stuck decoder repeats
QUIET_DB = -12.0
SILENCE_DBFS = -70.0  # a noise floor rather than digital zeros, as a dead decoder still dithers


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim, or tile `x` along time, to exactly n samples."""
    reps = -(-n // x.shape[-1])
    return np.tile(x, (1, reps))[:, :n] if reps > 1 else x[:, :n]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _level(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Back to the RMS of `like`, so only the intended measure moves; where that would raise the peak
    over `like`'s, a tanh limiter at that peak takes the excess (a few gain iterations)."""
    if _rms(out) == 0.0:
        return out
    ceiling, gain = float(np.max(np.abs(like))), _rms(like) / _rms(out)
    if gain * float(np.max(np.abs(out))) <= ceiling:
        return out * gain
    for _ in range(4):
        gain *= _rms(like) / _rms(ceiling * np.tanh(gain * out / ceiling))
    return ceiling * np.tanh(gain * out / ceiling)


def _mid_side(f, new: np.ndarray) -> np.ndarray:
    """Run `f` on mid and side: a phase vocoder run per channel loses the L/R phase relation (the mono
    sum drops by ~6 dB), while mid stays whole this way."""
    if new.shape[0] != 2:
        return f(new)
    mid, side = f(np.stack([new[0] + new[1], new[0] - new[1]]) / 2)
    return np.stack([mid + side, mid - side])


def silence(new: np.ndarray, sr: int) -> np.ndarray:
    """The decoder died: a -70 dBFS (RMS) white noise floor, fixed seed."""
    noise = np.random.default_rng(0).standard_normal(new.shape)
    return noise * 10 ** (SILENCE_DBFS / 20)


def tempo(new: np.ndarray, sr: int) -> np.ndarray:
    """Tempo jump x1.25 (pitch and level kept); the shortened result is tiled back to length."""
    import librosa

    return _level(_fit(_mid_side(lambda x: librosa.effects.time_stretch(x, rate=TEMPO_RATE), new),
                       new.shape[-1]), new)


def key(new: np.ndarray, sr: int) -> np.ndarray:
    """Key change by a tritone (tempo and level kept)."""
    import librosa

    return _level(_fit(_mid_side(lambda x: librosa.effects.pitch_shift(x, sr=sr, n_steps=KEY_STEPS), new),
                       new.shape[-1]), new)


def loop(new: np.ndarray, sr: int) -> np.ndarray:
    """Stuck in a loop: the first 1.5 s of the new part, repeated to its end."""
    return _fit(new[:, : int(LOOP_S * sr)], new.shape[-1])


def quiet(new: np.ndarray, sr: int) -> np.ndarray:
    """Loudness drop of 12 dB."""
    return new * 10 ** (QUIET_DB / 20)


def drums(new: np.ndarray, sr: int) -> np.ndarray:
    """Collapse to drums at the same level: the percussive mask of an HPSS split (margin 2) of the
    summed channels, applied to both (one median filter pass instead of two)."""
    import librosa

    spec = librosa.stft(new)
    _, mask = librosa.decompose.hpss(np.abs(spec).sum(axis=0), kernel_size=17, margin=2.0, mask=True)
    return _level(librosa.istft(spec * mask, length=new.shape[-1]), new)


def copy(new: np.ndarray, sr: int, earlier: np.ndarray) -> np.ndarray:
    """The new part replays earlier material: the context (tiled) or, without one, its own first half."""
    if earlier.shape[-1] >= 4 * sr:
        return _fit(earlier, new.shape[-1])
    half = new.shape[-1] // 2
    return np.concatenate([new[:, :half], _fit(new[:, :half], new.shape[-1] - half)], axis=1)


FAULTS = {"silence": silence, "tempo": tempo, "key": key, "loop": loop, "quiet": quiet, "drums": drums,
          "copy": copy}


def check_fault(name: str) -> str:
    if name not in FAULTS:
        raise ValueError(f"fault: {name!r} is not one of {', '.join(FAULTS)}")
    return name


def inject(audio: np.ndarray, start: int, name: str, sr: int) -> np.ndarray:
    """A copy of `audio` (channels, samples) with fault `name` applied after sample `start`."""
    check_fault(name)
    if not 0 <= start < audio.shape[-1]:
        raise ValueError(f"fault: new part starts at sample {start} of {audio.shape[-1]}; nothing to change")
    new = np.ascontiguousarray(audio[:, start:], dtype=np.float32)
    bad = copy(new, sr, audio[:, :start]) if name == "copy" else FAULTS[name](new, sr)
    out = np.array(audio, dtype=np.float32, copy=True)
    out[:, start:] = bad
    return out


class FaultyEngine:
    """Wraps an engine and spoils the windows keyed (index, reroll); presents the inner identity so a
    registry serves it in place of the real engine."""

    def __init__(self, inner: Engine, faults: dict[tuple[int, int], str]):
        for k, name in faults.items():
            check_fault(name)
            if not (isinstance(k, tuple) and len(k) == 2 and all(isinstance(i, int) for i in k)):
                raise ValueError(f"fault: key {k!r} must be (window index, re-roll), two ints")
        self.inner = inner
        self.faults = dict(faults)
        self.name, self.model, self.version = inner.name, inner.model, inner.version
        self.sample_rate, self.channels = inner.sample_rate, inner.channels
        self.reuses_context_audio = inner.reuses_context_audio

    def generate(self, req: WindowRequest, on_step: StepCallback) -> WindowResult:
        result = self.inner.generate(req, on_step)
        name = self.faults.get((req.index, req.reroll))
        if name is None:
            return result
        start = req.context_frames * self.inner.sample_rate // FRAME_RATE
        audio = inject(result.audio, start, name, self.inner.sample_rate)
        return WindowResult(audio, result.handoff, {**result.details, "fault": name})
