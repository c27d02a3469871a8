"""The engine interface the GPU segment activity drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from longsong.request import Sampling

StepCallback = Callable[[int, int], None]
"""on_step(done_steps, total_steps); the activity heartbeats and raises if cancelled."""


class EngineError(RuntimeError):
    """A request this engine can never serve (unknown model, bad window, bad sampling): not retryable."""


class TransientEngineError(RuntimeError):
    """Worth retrying (e.g. GPU out of memory): the message carries model, batch and window."""


@dataclass
class WindowRequest:
    text: str  # full conditioning text of this window
    seed: int
    n_frames: int  # window length in 50 Hz frames, context included
    context_frames: int  # frames re-generated from `handoff` at the start of the window (0: text only)
    sampling: Sampling
    handoff: bytes | None  # previous window's hand-off state, as that engine serialized it
    index: int = 0  # window number in the song (engines ignore it; the test fault engine keys on it)
    reroll: int = 0  # 0: first try; n: the quality gate's n-th re-roll (seed already derived)
    context_audio: np.ndarray | None = None  # the previous window's audio of the context frames (float32,
    # (channels, context_frames * hop)): an engine may reuse it instead of decoding the context again


@dataclass
class WindowResult:
    audio: np.ndarray  # float32, shape (channels, n_frames * sample_rate // FRAME_RATE), context part included
    handoff: bytes  # state to continue from the end of this window
    details: dict[str, str]  # engine facts recorded in the track metadata


class Engine(Protocol):
    name: str  # "procedural", "musicgen"
    model: str  # model id or path this instance serves
    version: str  # revision (commit hash or weight content hash)
    sample_rate: int
    channels: int
    reuses_context_audio: bool  # reads WindowRequest.context_audio (the activity fetches it only then)

    def generate(self, req: WindowRequest, on_step: StepCallback) -> WindowResult: ...
