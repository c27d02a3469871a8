"""Continuous batching (issue 12): windows of different songs decoded together give exactly the codes
they give alone (CPU, float32), join and leave at step boundaries, can be cancelled one by one, wait
for memory, and shrink the batch on out-of-memory instead of failing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from longsong.engines import musicgen as mg  # noqa: E402
from longsong.engines.musicgen.engine import MAX_WINDOW_FRAMES  # noqa: E402
from longsong.engines.base import EngineError, WindowRequest  # noqa: E402
from longsong.engines.musicgen.batching import MIB, TEXT_TOKENS_PLANNED, window_bytes  # noqa: E402
from longsong.engines.musicgen.sampling import SamplingConfig  # noqa: E402
from longsong.request import Sampling  # noqa: E402
from longsong.settings import Settings  # noqa: E402
from tiny_musicgen import build_tiny_checkpoint  # noqa: E402

TEXTS = ["upbeat rock song with drums", "calm piano", "dark techno with bass, 128 bpm, minor key", "lofi",
         "happy pop song with guitar and strings"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    return {"mono": build_tiny_checkpoint(root / "tiny-mono"),
            "stereo": build_tiny_checkpoint(root / "tiny-stereo", stereo=True)}


def load(path, batch: int, memory_mb: float = 0):
    return mg.load_models(Settings(models=(str(path),), device="cpu", gpu_batch=batch, gpu_memory_mb=memory_mb))[0]


def jobs(eng, n=5):
    """Windows that differ in everything a row keeps: text (and its length, one partly masked), prompt
    length, window length, sampling (greedy, top-k, top-p, no CFG) and seed."""
    sps = [SamplingConfig(greedy=True, cfg=3.0), SamplingConfig(top_k=50, cfg=3.0),
           SamplingConfig(top_k=0, top_p=0.9, cfg=1.0, temperature=1.3), SamplingConfig(top_k=20, cfg=2.0),
           SamplingConfig(top_k=1, cfg=1.0, greedy=True)]
    gen = torch.Generator().manual_seed(1)
    out = []
    for j in range(n):
        states, mask = eng.text_states(TEXTS[j])
        if j == 2:
            mask = mask.clone()
            mask[0, -2:] = 0
        prompt = torch.randint(0, eng.vocab, (eng.num_codebooks, 5 * j), generator=gen) if j else None
        out.append((states, mask, prompt, 30 + 3 * j, sps[j], 100 + j))
    return out


def trace_alone(loop, job):
    w = loop.start(*job)
    logits = []
    while not w.done:
        loop.step([w])
        logits.append(w.logits.clone())
    res = loop.result(w, 0, "eager")
    w.release()
    return res.codes, logits


@pytest.mark.parametrize("kind", ["mono", "stereo"])
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_windows_are_bit_identical_to_alone(ckpts, kind, threads):
    """Five windows joining a running batch every 4 steps and leaving when done: every step's logits and
    the codes have the same bits as each window alone (one thread and two: MKL splits work by threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loop = load(ckpts[kind], 1).loop
        assert loop.row_tile > 1  # probed: the BLAS row tile of this machine
        with torch.inference_mode():
            work = jobs(mg.load_engine(str(ckpts[kind]), Settings(device="cpu")))
            alone = [trace_alone(loop, job) for job in work]
            active, codes, logits, pending, step, sizes = [], {}, {j: [] for j in range(5)}, list(range(5)), 0, set()
            while pending or active:
                if pending and step % 4 == 0:
                    j = pending.pop(0)
                    w = loop.start(*work[j])
                    w.job = j
                    active.append(w)
                loop.step(active)
                sizes.add(len(active))
                for w in active:
                    logits[w.job].append(w.logits.clone())
                for w in [w for w in active if w.done]:
                    codes[w.job] = loop.result(w, 0, "eager").codes
                    active.remove(w)
                step += 1
    finally:
        torch.set_num_threads(before)
    assert {1, 2, 3, 4, 5} <= sizes  # batches of every size from 1 to 5 were stepped
    for j, (ref_codes, ref_logits) in enumerate(alone):
        assert torch.equal(codes[j], ref_codes), j
        assert len(logits[j]) == len(ref_logits)
        assert all(torch.equal(a, b) for a, b in zip(logits[j], ref_logits)), j


def req(i, n=40, context=0, handoff=None, **sampling):
    return WindowRequest(TEXTS[i % len(TEXTS)], 50 + i, n, context, Sampling(**{"top_k": 50, **sampling}), handoff)


class Progress:
    """on_step as the activity passes it: records progress; raises (cancel) once `stop_at` steps are done."""

    def __init__(self, stop_at: int | None = None):
        self.calls: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, done, total):
        self.calls.append((done, total))
        if self.stop_at is not None and done >= self.stop_at:
            raise RuntimeError("cancelled")


def together(eng, requests, progress=None):
    """Generate `requests` from one thread each (as the GPU worker's activity threads do)."""
    out: list = [None] * len(requests)
    progress = progress or [Progress() for _ in requests]

    def run(i):
        try:
            out[i] = eng.generate(requests[i], progress[i])
        except Exception as exc:  # noqa: BLE001
            out[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


@pytest.fixture(scope="module")
def single(ckpts):
    return load(ckpts["mono"], 1)


def codes(result):
    return mg.decode_handoff(result.handoff)[1]


def err_db(audio: np.ndarray, ref: np.ndarray) -> float:
    err = np.sum((audio.astype(np.float64) - ref) ** 2)
    return float(10 * np.log10(max(err, 1e-300) / np.sum(ref.astype(np.float64) ** 2)))


def test_engine_batch_equals_engine_alone(ckpts, single):
    """Four windows through the scheduler (4 threads, batch 4): the same codes as one at a time, and each
    records the batch it ran in. Their audio: windows that finish on one step share one EnCodec call, which
    rounds differently from a call of one (-134 dB on musicgen-small's codec, tests/test_codec.py): equal
    within -120 dB."""
    eng = load(ckpts["mono"], 4)
    requests = [req(i, n=40 + 5 * i) for i in range(4)]
    first = single.generate(requests[0], Progress())
    requests.append(req(4, n=50, context=12, handoff=first.handoff))
    out = together(eng, requests)
    for r, o in zip(requests, out):
        ref = single.generate(r, Progress())
        np.testing.assert_array_equal(codes(o), codes(ref))
        assert o.audio.shape == ref.audio.shape and err_db(o.audio, ref.audio) < -120
        assert o.details["gpu_batch"] == "4" and 1 <= int(o.details["batch"]) <= 4
    assert max(int(o.details["batch"]) for o in out) > 1
    assert single.generate(requests[0], Progress()).details["batch"] == "1"


def test_cancel_one_window_leaves_the_others(ckpts, single):
    """One window cancelled mid-batch (its activity's heartbeat raises): it stops within a step; the
    others finish with their alone codes; its buffers go back to the budget."""
    eng = load(ckpts["mono"], 4)
    requests = [req(i, n=120) for i in range(3)]
    progress = [Progress(), Progress(stop_at=20), Progress()]
    out = together(eng, requests, progress)
    assert isinstance(out[1], RuntimeError)
    for i in (0, 2):
        np.testing.assert_array_equal(codes(out[i]), codes(single.generate(requests[i], Progress())))
    assert all(0 <= done <= total for done, total in progress[0].calls) and progress[0].calls[-1][0] == 123
    deadline = threading.Event()
    while eng._budget.used and not deadline.wait(0.05):
        pass
    assert eng._budget.used == 0


def test_memory_budget_caps_the_batch(ckpts, single):
    """A budget with room for two windows: four submitted run at most two at a time, all complete unchanged."""
    probe = load(ckpts["mono"], 4)
    sp = SamplingConfig(top_k=50, cfg=3.0)
    one = window_bytes(probe.loop, 40, 0, sp, int(probe.text_states(TEXTS[4])[0].shape[1]))
    ref = window_bytes(probe.loop, MAX_WINDOW_FRAMES, MAX_WINDOW_FRAMES - 1, SamplingConfig(),
                       TEXT_TOKENS_PLANNED)
    eng = load(ckpts["mono"], 4, memory_mb=max(ref, 2.5 * one) / MIB)
    eng._budget.total = int(2.5 * one)  # two 40-frame windows fit, three do not
    requests = [req(i, n=40) for i in range(4)]
    out = together(eng, requests)
    assert max(int(o.details["batch"]) for o in out) == 2
    for r, o in zip(requests, out):
        np.testing.assert_array_equal(codes(o), codes(single.generate(r, Progress())))


def test_budget_smaller_than_one_window_fails_at_start(ckpts):
    with pytest.raises(EngineError) as e:
        load(ckpts["mono"], 4, memory_mb=0.5)
    msg = str(e.value)
    assert "\n" not in msg and "LONGSONG_GPU_MEMORY_MB" in msg and "tiny-mono" in msg and "MiB" in msg


def test_window_bigger_than_the_budget_is_not_retryable(ckpts):
    """Fits the start-up check (one default window) but this request's text is far longer: EngineError
    (the activity does not retry it) naming model, batch and budget."""
    probe = load(ckpts["mono"], 4)
    ref = window_bytes(probe.loop, MAX_WINDOW_FRAMES, MAX_WINDOW_FRAMES - 1, SamplingConfig(),
                       TEXT_TOKENS_PLANNED)
    eng = load(ckpts["mono"], 4, memory_mb=(ref + 1000) / MIB)
    long_text = " ".join(TEXTS * 20)
    big = WindowRequest(long_text, 1, MAX_WINDOW_FRAMES, MAX_WINDOW_FRAMES - 1, Sampling(),
                        mg.encode_handoff(np.zeros((4, 1500), np.int16), eng.model, eng.version, 1))
    with pytest.raises(EngineError) as e:
        eng.generate(big, Progress())
    msg = str(e.value)
    assert "\n" not in msg and "tiny-mono" in msg and "LONGSONG_GPU_BATCH=4" in msg and "budget" in msg


def watch_steps(monkeypatch, loop, before_step):
    """Wrap the loop's step: `before_step(windows, prefilling)` runs first (it may raise), where `prefilling`
    says whether a joining window's prefill is under way (the step runs beside it)."""
    real_start, real_step, prefilling = loop.start, loop.step, []

    def start(*args, **kw):
        prefilling.append(True)
        try:
            return real_start(*args, **kw)
        finally:
            prefilling.pop()

    def step(ws):
        before_step(ws, bool(prefilling))
        return real_step(ws)
    monkeypatch.setattr(loop, "start", start)
    monkeypatch.setattr(loop, "step", step)


@pytest.mark.parametrize("where", ["beside-prefill", "step"])
def test_out_of_memory_shrinks_the_batch(ckpts, single, monkeypatch, where):
    """A step with three or more windows in it runs out of memory (the CPU cannot be made to, so the step
    raises torch's OutOfMemoryError there, once): beside a joining window's prefill, that window goes back to
    wait and the batch is capped at the three running; in a plain step, the newest running window goes back
    and the batch is capped below the size that failed. Every window still gets its alone codes."""
    eng = load(ckpts["mono"], 4)
    fired = []

    def oom(ws, prefilling):
        if len(ws) >= 3 and not fired and prefilling == (where == "beside-prefill"):
            fired.append(len(ws))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
    watch_steps(monkeypatch, eng.loop, oom)
    requests = [req(i, n=60) for i in range(4)]
    out = together(eng, requests)
    if where == "beside-prefill":
        assert fired == [3] and eng._scheduler.limit == 3
    else:
        assert fired and eng._scheduler.limit == fired[0] - 1
    for r, o in zip(requests, out):
        np.testing.assert_array_equal(codes(o), codes(single.generate(r, Progress())))
    assert eng._budget.used == 0


def test_gpu_batch_setting_is_checked():
    from longsong.settings import SettingsError

    for raw in ("0", "-1", "four", "2.5"):
        with pytest.raises(SettingsError) as e:
            Settings.from_env({"LONGSONG_GPU_BATCH": raw})
        assert "LONGSONG_GPU_BATCH" in str(e.value) and "between 1 and 64" in str(e.value)


@pytest.mark.parametrize("env, expect", [
    ({"LONGSONG_GPU_BATCH": "0"}, "worker_gpu: LONGSONG_GPU_BATCH='0' is not an integer between 1 and 64"),
    ({"LONGSONG_GPU_BATCH": "lots"}, "worker_gpu: LONGSONG_GPU_BATCH='lots' is not an integer between 1 and 64"),
    ({"LONGSONG_GPU_MEMORY_MB": "0.5"}, "worker_gpu: LONGSONG_GPU_MEMORY_MB: a budget of 0.5 MiB is smaller than one "
                                        "30 s window of"),
], ids=["zero", "not-a-number", "budget-below-one-window"])
def test_gpu_worker_start_fails_in_one_line(ckpts, tmp_path, env, expect):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "worker_gpu"], cwd=root, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "LONGSONG_ENGINES": "musicgen", "LONGSONG_MODELS": str(ckpts["mono"]),
                              "LONGSONG_DEVICE": "cpu", "LONGSONG_HOME": str(tmp_path), **env})
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("worker_gpu:")]
    assert len(lines) == 1 and lines[0].startswith(expect), run.stderr


def test_context_audio_of_the_wrong_shape_is_refused(single):
    first = single.generate(req(0, n=120), Progress())
    bad = req(1, n=120, context=60, handoff=first.handoff)
    bad.context_audio = np.zeros((2, 60 * 640), np.float32)  # a mono model, two channels
    with pytest.raises(EngineError, match=r"^context_audio: shape \(2, 38400\) is not \(channels=1"):
        single.generate(bad, Progress())
    good = req(1, n=120, context=60, handoff=first.handoff)
    good.context_audio = first.audio[:, -60 * 640:]
    out = single.generate(good, Progress())
    assert out.details["decoded_from_frame"] == "56"
    np.testing.assert_array_equal(out.audio[:, :56 * 640], first.audio[:, -60 * 640:-4 * 640])  # reused as is


def test_running_windows_keep_stepping_while_one_prefills(ckpts, single, monkeypatch):
    """A window joining with a 40-frame prompt is prefilled layer by layer with a step of the running windows
    after each layer (they do not stall for a long CPU prefill); codes unchanged."""
    eng = load(ckpts["mono"], 4)
    during = []
    watch_steps(monkeypatch, eng.loop, lambda ws, prefilling: during.append(len(ws)) if prefilling else None)
    first = single.generate(req(0, n=60), Progress())
    requests = [req(1, n=1400), req(2, n=100, context=40, handoff=first.handoff)]  # the first runs for seconds
    progress = [Progress(), Progress()]
    out: list = [None, None]
    t0 = threading.Thread(target=lambda: out.__setitem__(0, eng.generate(requests[0], progress[0])))
    t0.start()
    while not progress[0].calls or progress[0].calls[-1][0] < 5:  # the first window is running
        threading.Event().wait(0.01)
    out[1] = eng.generate(requests[1], progress[1])
    t0.join(60)
    assert len(during) == len(eng.loop.layers)  # one step of the running window per prefill layer
    for r, o in zip(requests, out):
        np.testing.assert_array_equal(codes(o), codes(single.generate(r, Progress())))


@pytest.mark.parametrize("sampling, prompt_frames", [(SamplingConfig(top_k=50, cfg=3.0), 20),
                                                     (SamplingConfig(top_k=0, cfg=1.0), 0),
                                                     (SamplingConfig(greedy=True, cfg=3.0), 39)])
def test_admission_counts_every_buffer_of_a_window(ckpts, sampling, prompt_frames):
    """What admission counts (window_bytes) covers every tensor a running window holds, so windows admitted
    within LONGSONG_GPU_MEMORY_MB stay within it."""
    eng = load(ckpts["mono"], 4)
    states, mask = eng.text_states(TEXTS[2])
    prompt = torch.randint(0, eng.vocab, (eng.num_codebooks, prompt_frames)) if prompt_frames else None
    with torch.inference_mode():
        w = eng.loop.start(states, mask, prompt, 60, sampling, 1)
    held = sum(t.untyped_storage().nbytes() for name in ("table", "seq", "noise", "cross_mask", "logits")
               if (t := getattr(w, name)) is not None)
    held += sum(t.untyped_storage().nbytes() for name in ("cross_k", "cross_v", "k_cache", "v_cache")
                for t in getattr(w, name))
    need = window_bytes(eng.loop, 60, prompt_frames, sampling, int(states.shape[1]))
    assert held <= need, (held, need)
    w.release()
