"""Continuous batching of MusicGen windows from different songs (issue 12).

A decoding step is memory-bound: it streams every decoder weight to compute a few rows. One thread per
model (the scheduler) steps every admitted window together (DecodeLoop.step); windows join at step
boundaries (prefilled alone, then stepped with the others) and leave when their last token is drawn,
without stopping the rest. A joining window's prefill (seconds on CPU for a long prompt) runs layer by
layer with one step of the running windows after each layer, so they do not stall while it fills. The activity threads only submit a Ticket and wait on it, heart-beating
with its progress; a cancelled activity flags its ticket and the scheduler drops that window at the
next step boundary.

Admission is by a memory budget for the windows' buffers (KV cache, text keys/values, sampling noise,
prefill activations; `window_bytes`): a window that does not fit waits for others to leave. An
out-of-memory step or prefill shrinks the batch instead of failing windows: the newest window (the
joining one, in a prefill) goes back to the head of the queue (it restarts from its prefill later; its
noise comes from its seed, so on CPU in float32 its codes do not change) and fewer windows are admitted
from then on (until the worker restarts). Only a window that runs out of memory alone fails, as a
retryable TransientEngineError.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from longsong.engines.base import EngineError, TransientEngineError
from longsong.engines.musicgen.loop import DecodeLoop, LoopResult
from longsong.engines.musicgen.sampling import SamplingConfig

MIB = 2**20
TEXT_TOKENS_PLANNED = 64  # text length the start-up check plans one window with (prompts are ~10-40 tokens)


def window_bytes(loop: DecodeLoop, n_frames: int, prompt_frames: int, sampling: SamplingConfig,
                 text_tokens: int) -> int:
    """Upper estimate of one window's buffers in the batched loop: what admission counts."""
    rows = sampling.batch
    elt = torch.finfo(loop.dtype).bits // 8
    length = n_frames + loop.channel_codebooks
    layers = len(loop.layers)
    kv = layers * 2 * rows * length * loop.hidden * elt
    cross = layers * 2 * rows * text_tokens * loop.hidden * elt
    cand = 0 if sampling.greedy else (min(sampling.top_k, loop.vocab) if sampling.top_k > 0 else loop.vocab)
    noise = length * loop.num_codebooks * cand * 4
    small = length * loop.num_codebooks * 8 * 2 + rows * loop.num_codebooks * loop.vocab * 4
    prefill = rows * (prompt_frames + 1) * (loop.ffn + 6 * loop.hidden) * elt * 2  # peak of one prefill layer
    return kv + cross + noise + small + prefill


class Budget:
    """Bytes the windows' buffers may take, shared by every model of a GPU worker."""

    def __init__(self, total: int):
        self.total = int(total)
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass(eq=False)
class Ticket:
    """One window's place in the batch; the activity thread waits on it."""

    text_states: torch.Tensor
    text_mask: torch.Tensor
    prompt: torch.Tensor | None
    n_frames: int
    sampling: SamplingConfig
    seed: int
    bytes: int
    decode_from: int = 0  # first frame the window's audio is decoded from (MusicGenEngine.decode_from)
    context_audio: object = None  # the reused audio before decode_from (or None)
    progress: tuple[int, int] = (0, 0)
    batch_max: int = 0  # most windows stepped together while this one ran
    result: LoopResult | None = None
    audio: object = None
    error: BaseException | None = None
    cancelled: bool = False
    _done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def finish(self, result: LoopResult | None = None, audio=None, error: BaseException | None = None) -> None:
        self.result, self.audio, self.error = result, audio, error
        self._done.set()


class _Cancelled(Exception):
    """Raised inside a prefill whose ticket was cancelled."""


class BatchScheduler:
    """Steps up to `max_windows` windows of one DecodeLoop together, on its own thread."""

    def __init__(self, loop: DecodeLoop, max_windows: int, budget: Budget,
                 decode: Callable[[list[tuple["Ticket", torch.Tensor]]], list], name: str):
        self.loop = loop
        self.limit = max_windows  # lowered by an out-of-memory step
        self.budget = budget
        self.decode = decode  # (ticket, codes) of windows that finished on one step -> their audio, batched
        self.name = name
        self._queue: deque[Ticket] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, ticket: Ticket) -> None:
        with self._cv:
            self._queue.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"batch-{self.name}", daemon=True)
                self._thread.start()
            self._cv.notify()

    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        active: list[tuple[Ticket, object]] = []
        while True:
            with self._cv:
                while not self._queue and not active:
                    self._cv.wait()
            try:
                with torch.inference_mode():
                    self._admit(active)
                    self._drop_cancelled(active)
                    if active:
                        self._step(active)
                    else:  # the head waits for memory another model's windows hold: look again shortly
                        with self._cv:
                            self._cv.wait(0.05)
            except BaseException as exc:  # noqa: BLE001 - a bug here must fail the windows, not hang them
                for t, w in active:
                    self._leave(t, w)
                    t.finish(error=exc)
                active.clear()

    def _admit(self, active: list) -> None:
        while len(active) < self.limit:
            with self._cv:
                if not self._queue:
                    return
                t = self._queue[0]
                if t.cancelled:
                    self._queue.popleft()
                    t.finish(error=_Cancelled())
                    continue
                if not self.budget.take(t.bytes):
                    return  # waits for a window to leave (or for another model's to)
                self._queue.popleft()

            def tick(t=t):  # after each prefill layer: the running windows take one step meanwhile
                if t.cancelled:
                    raise _Cancelled()
                self._drop_cancelled(active)
                if active:
                    self._step(active, nested=True)

            try:
                w = self.loop.start(t.text_states, t.text_mask, t.prompt, t.n_frames, t.sampling, t.seed, tick)
            except torch.OutOfMemoryError:  # in the prefill or a step beside it: the joining window waits
                self.budget.give(t.bytes)
                self._free()
                if not active:
                    t.finish(error=self._oom(t))
                    continue
                self._requeue(t, len(active))
                return
            except BaseException as exc:  # noqa: BLE001 - the window's own failure, not the batch's
                self.budget.give(t.bytes)
                t.finish(error=exc)
                continue
            active.append((t, w))
            t.progress = (0, w.length - w.prefix)

    def _drop_cancelled(self, active: list) -> None:
        for t, w in [a for a in active if a[0].cancelled]:
            active.remove((t, w))
            self._leave(t, w)
            t.finish(error=_Cancelled())

    def _step(self, active: list, nested: bool = False) -> None:
        """One step of the running windows; finished ones leave, decoded together. `nested`: beside a prefill,
        whose joining window is the newest: out of memory there aborts that prefill (the caller requeues it)."""
        try:
            self.loop.step([w for _, w in active])
        except torch.OutOfMemoryError:
            if nested:
                raise
            t, w = active.pop()  # the newest window leaves (and comes back later); the others retry this step
            self._leave(t, w)
            self._free()
            if active:
                self._requeue(t, len(active))
            else:
                t.finish(error=self._oom(t))
            return
        finished = []
        for t, w in active:
            t.batch_max = max(t.batch_max, len(active))
            t.progress = (w.t - w.prefix, w.length - w.prefix)
            if w.done:
                finished.append((t, w))
        done = []
        for t, w in finished:
            active.remove((t, w))
            try:
                done.append((t, self.loop.result(w, 0 if t.prompt is None else int(t.prompt.shape[-1]), "eager")))
            except BaseException as exc:  # noqa: BLE001 - this window's failure only
                t.finish(error=exc)
            finally:
                self._leave(t, w)
        if not done:
            return
        try:
            audio = self.decode([(t, r.codes) for t, r in done])
        except BaseException as exc:  # noqa: BLE001 - the decode failed for these windows only
            self._free()
            for t, _ in done:
                t.finish(error=exc)
            return
        for (t, res), a in zip(done, audio):
            t.finish(res, a)

    def _leave(self, t: Ticket, w) -> None:
        """A window's buffers go, and their bytes back to the budget (once: every exit path comes here)."""
        w.release()
        self.budget.give(t.bytes)

    def _free(self) -> None:
        if self.loop.device.type == "cuda":
            torch.cuda.empty_cache()

    def _requeue(self, t: Ticket, fits: int) -> None:
        self.limit = max(1, fits)
        with self._cv:
            self._queue.appendleft(t)

    def _oom(self, t: Ticket) -> TransientEngineError:
        return TransientEngineError(
            f"out of memory on {self.loop.device} generating a window alone: model={self.name}, batch=1 window, "
            f"window={t.n_frames} frames (prompt {0 if t.prompt is None else t.prompt.shape[-1]}), "
            f"budget {self.budget.total // MIB} MiB")


def check_fits(t: Ticket, budget: Budget, model: str, max_windows: int) -> None:
    """A window bigger than the whole budget can never run: a non-retryable error naming model, batch, budget."""
    if t.bytes > budget.total:
        raise EngineError(
            f"memory: a window of {t.n_frames} frames ({'CFG' if t.sampling.batch == 2 else 'no CFG'}, prompt "
            f"{0 if t.prompt is None else t.prompt.shape[-1]} frames) needs {t.bytes / MIB:.0f} MiB of buffers, more "
            f"than the whole budget (LONGSONG_GPU_MEMORY_MB: {budget.total / MIB:.0f} MiB) of model {model} "
            f"with LONGSONG_GPU_BATCH={max_windows}")
