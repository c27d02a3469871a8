"""Engine `musicgen` on tiny random checkpoints (tests/tiny_musicgen.py), loaded through the real code path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from longsong.engines import musicgen as mg  # noqa: E402
from longsong.engines.base import EngineError, TransientEngineError, WindowRequest  # noqa: E402
from longsong.engines.musicgen.delay import build_delay_table  # noqa: E402
from longsong.engines.musicgen.loop import DecodeLoop  # noqa: E402
from longsong.engines.musicgen.sampling import SamplingConfig, pick  # noqa: E402
from longsong.engines.registry import EngineRegistry  # noqa: E402
from longsong.request import Sampling  # noqa: E402
from longsong.settings import Settings, SettingsError  # noqa: E402
from tiny_musicgen import build_tiny_checkpoint  # noqa: E402

TEXT = "upbeat rock song with drums, 120 bpm"
HOP = 640


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("musicgen")
    return {"mono": build_tiny_checkpoint(root / "tiny-mono"),
            "stereo": build_tiny_checkpoint(root / "tiny-stereo", stereo=True)}


@pytest.fixture(scope="module")
def engines(ckpts):
    mp = pytest.MonkeyPatch()
    mp.setenv("LONGSONG_MODELS", f"{ckpts['mono']},{ckpts['stereo']}")
    for var in ("LONGSONG_DEVICE", "LONGSONG_DTYPE", "LONGSONG_QUANTIZE", "LONGSONG_CHANNELS", "LONGSONG_CUDA_GRAPH"):
        mp.delenv(var, raising=False)
    mp.setenv("LONGSONG_DEVICE", "cpu")
    mp.setenv("LONGSONG_GPU_BATCH", "1")  # one window at a time, every step reported (test_batching: batches)
    try:
        loaded = mg.load_models(Settings.from_env())
    finally:
        mp.undo()
    return {"mono": loaded[0], "stereo": loaded[1]}


def req(n=40, context=0, handoff=None, seed=7, text=TEXT, **sampling):
    return WindowRequest(text, seed, n, context, Sampling(**sampling), handoff)


def codes_of(result) -> np.ndarray:
    return mg.decode_handoff(result.handoff)[1]


class Steps:
    def __init__(self, stop_at=None):
        self.calls = []
        self.stop_at = stop_at

    def __call__(self, done, total):
        self.calls.append((done, total))
        if self.stop_at is not None and done >= self.stop_at:
            raise KeyboardInterrupt("cancelled")  # stands in for temporalio's CancelledError


# ----------------------------------------------------------------------------------------------
# stock transformers as the reference


@pytest.fixture(scope="module")
def stock(ckpts):
    """Pristine models (not touched by the engine) and a stock-generate greedy runner returning codes."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    out = {}
    for kind, path in ckpts.items():
        model = MusicgenForConditionalGeneration.from_pretrained(str(path)).eval()
        proc = AutoProcessor.from_pretrained(str(path))
        out[kind] = (model, proc)

    def run(kind, n_frames, prompt=None, text=TEXT):
        model, proc = out[kind]
        seen = []
        real = model.audio_encoder.decode

        def spy(codes, *a, **k):
            seen.append(codes.clone())
            return real(codes, *a, **k)

        k_books = model.decoder.num_codebooks
        c_books = k_books // model.decoder.config.audio_channels
        kw, m = {}, 0
        if prompt is not None:
            kw["decoder_input_ids"] = torch.as_tensor(prompt).reshape(k_books, -1)
            m = prompt.shape[-1]
        inputs = proc(text=[text], padding=True, return_tensors="pt")
        model.audio_encoder.decode = spy
        try:
            with torch.no_grad():
                audio = model.generate(**inputs, do_sample=False, guidance_scale=3.0,
                                       max_new_tokens=n_frames - m + c_books - 1, **kw)
        finally:
            model.audio_encoder.decode = real
        if len(seen) == 1:
            codes = seen[0][0, 0]
        else:  # stereo: left (even codebooks) then right (odd)
            codes = torch.empty((k_books, seen[0].shape[-1]), dtype=torch.long)
            codes[0::2], codes[1::2] = seen[0][0, 0], seen[1][0, 0]
        return codes.numpy(), audio[0].numpy()

    return run


# ----------------------------------------------------------------------------------------------
# loading


def test_loads_through_real_code_path(engines, ckpts):
    mono, stereo = engines["mono"], engines["stereo"]
    assert (mono.name, mono.model, mono.channels, mono.sample_rate) == ("musicgen", str(ckpts["mono"]), 1, 32000)
    assert (stereo.channels, stereo.num_codebooks) == (2, 8)
    assert mono.version.startswith("sha256:") and len(mono.version) == 71 and mono.version != stereo.version
    assert mono.version == mg.weights_hash(ckpts["mono"])
    reg = EngineRegistry([mono, stereo])
    assert reg.get("musicgen", None) is mono  # default: the first model listed
    assert reg.get("musicgen", "tiny-stereo") is stereo  # by basename
    assert reg.get("musicgen", str(ckpts["stereo"])) is stereo
    with pytest.raises(EngineError, match="LONGSONG_MODELS"):
        reg.get("musicgen", "facebook/musicgen-large")
    d = mono.describe()
    assert d["model"] == str(ckpts["mono"]) and d["revision"] == mono.version
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["quantize"] == "none"


def test_missing_hub_checkpoint_offline_names_the_id_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(EngineError) as err:
        mg.load_engine("facebook/musicgen-nonexistent")
    msg = str(err.value)
    assert "'facebook/musicgen-nonexistent'" in msg and "LONGSONG_MODELS=/path/to/dir" in msg
    assert "\n" not in msg


def test_local_path_errors(tmp_path):
    with pytest.raises(EngineError, match="model: .*does-not-exist"):
        mg.load_engine(str(tmp_path / "does-not-exist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(EngineError, match=r"model: local path .*empty.* has no MusicGen weights"):
        mg.load_engine(str(empty))
    with pytest.raises(EngineError, match="model: 'not a model id'"):
        mg.load_engine("not a model id")


def test_stereo_forced_to_mono_is_an_error_at_load(ckpts, monkeypatch):
    monkeypatch.setenv("LONGSONG_MODELS", str(ckpts["stereo"]))
    monkeypatch.setenv("LONGSONG_CHANNELS", "1")
    with pytest.raises(EngineError, match=r"channels: .*stereo"):
        mg.load_models(Settings.from_env())
    with pytest.raises(EngineError, match="channels: .*mono"):
        mg.load_engine(str(ckpts["mono"]), Settings(channels="2"))


@pytest.mark.parametrize("var,value", [("LONGSONG_DEVICE", "tpu"), ("LONGSONG_DTYPE", "int4"),
                                       ("LONGSONG_QUANTIZE", "int4"), ("LONGSONG_CHANNELS", "3")])
def test_bad_settings_name_the_variable(var, value, monkeypatch):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        Settings.from_env()


def test_settings_that_need_a_gpu_are_refused_on_cpu(ckpts):
    with pytest.raises(EngineError, match="LONGSONG_DTYPE=float16"):
        mg.load_engine(str(ckpts["mono"]), Settings(device="cpu", dtype="float16"))
    with pytest.raises(EngineError, match="LONGSONG_CUDA_GRAPH"):
        mg.load_engine(str(ckpts["mono"]), Settings(device="cpu", cuda_graph="1"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="LONGSONG_DEVICE=cuda"):
            mg.load_engine(str(ckpts["mono"]), Settings(device="cuda"))


# ----------------------------------------------------------------------------------------------
# delay pattern and exactness


@pytest.mark.parametrize("kind", ["mono", "stereo"])
def test_delay_table_is_transformers_pattern(kind):
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    channels = 2 if kind == "stereo" else 1
    dec = MusicgenForCausalLM(MusicgenDecoderConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1,
                                                    num_attention_heads=2, ffn_dim=8, num_codebooks=4 * channels,
                                                    audio_channels=channels, pad_token_id=64, bos_token_id=64))
    k = 4 * channels
    for m, n in [(0, 6), (0, 40), (3, 10), (12, 40), (39, 40)]:
        prompt = torch.randint(0, 64, (k, m)) if m else None
        table, s = build_delay_table(prompt, n, k, channels, 64)
        ids = torch.full((k, 1), 64, dtype=torch.long)
        if m:
            ids = torch.cat([ids, prompt], dim=1)
        ref_ids, pattern = dec.build_delay_pattern_mask(ids, pad_token_id=64, max_length=n + 4)
        assert torch.equal(table.t(), pattern), (m, n)
        assert s == ref_ids.shape[-1] == m + 1


@pytest.mark.parametrize("kind", ["mono", "stereo"])
@pytest.mark.parametrize("static", [False, True], ids=["eager", "static-step"])
def test_greedy_codes_equal_stock_generate(engines, stock, kind, static):
    """fp32, no quantization, greedy: the engine's loop gives stock generate's codes exactly, from text only
    and continuing a prompt. `static` runs the fixed-shape step the CUDA graph captures (uncaptured)."""
    eng = engines[kind]
    states, mask = eng.text_states(TEXT)
    greedy = SamplingConfig(greedy=True, cfg=3.0)
    res = eng.loop.generate(states, mask, None, 40, greedy, seed=0, static=static)
    ref, _ = stock(kind, 40)
    np.testing.assert_array_equal(res.codes.numpy(), ref)
    prompt = res.codes[:, 22:]
    res2 = eng.loop.generate(states, mask, prompt, 40, greedy, seed=0, static=static)
    ref2, _ = stock(kind, 40, prompt.numpy())
    np.testing.assert_array_equal(res2.codes.numpy(), ref2)
    assert res2.mode == ("static" if static else "eager") and res2.prefill_positions == 19


def test_engine_top_k_1_is_stock_greedy_with_audio(engines, stock):
    eng = engines["mono"]
    out = eng.generate(req(30, top_k=1), Steps())
    ref_codes, ref_audio = stock("mono", 30)
    np.testing.assert_array_equal(codes_of(out), ref_codes)
    n = min(ref_audio.shape[-1], out.audio.shape[-1])
    np.testing.assert_allclose(out.audio[:, :n], ref_audio[:, :n], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# continuation by tokens


@pytest.mark.parametrize("kind", ["mono", "stereo"])
def test_next_window_is_conditioned_on_the_previous_final_codes(engines, kind):
    eng = engines[kind]
    first = eng.generate(req(50, seed=1), Steps())
    prev = codes_of(first)
    assert prev.shape == (eng.num_codebooks, 50) and prev.dtype == np.int64
    t = eng.ticket(req(45, context=20, handoff=first.handoff, seed=2))
    res = eng.loop.generate(t.text_states, t.text_mask, t.prompt, t.n_frames, t.sampling, t.seed)
    # what the decoder was fed (read back from its delay-pattern sequence) is the previous window's tail
    np.testing.assert_array_equal(res.prompt.numpy(), prev[:, -20:])
    np.testing.assert_array_equal(res.codes[:, :20].numpy(), prev[:, -20:])
    assert res.prefill_positions == 21


def test_three_window_continuation(engines):
    """A 3-segment song at the engine level: windows of 60 frames, 24 frames of token context."""
    eng = engines["mono"]
    handoff, prev, windows = None, None, []
    for i in range(3):
        context = 0 if i == 0 else 24
        steps = Steps()
        out = eng.generate(req(60, context, handoff, seed=100 + i, text=f"{TEXT}, part {i}"), steps)
        assert out.audio.dtype == np.float32 and out.audio.shape == (1, 60 * HOP)
        assert np.isfinite(out.audio).all() and np.abs(out.audio).max() > 0
        codes = codes_of(out)
        if prev is not None:
            np.testing.assert_array_equal(codes[:, :24], prev[:, -24:])
        total = 60 - context + 3
        assert [c for c in steps.calls if c[0] > 0] == [(i, total) for i in range(1, total + 1)]
        assert steps.calls.count((0, total)) == (2 if context else 0)  # one tick per prefill layer
        assert out.details["context_frames"] == str(context) and out.details["handoff"] == "tokens"
        assert out.details["model"] == eng.model and out.details["revision"] == eng.version
        handoff, prev = out.handoff, codes
        windows.append(out)
    # the context part of a window is the same tokens, so nearly the same audio away from its edges
    # (decoder warm-up); other tokens give audibly different audio
    mid = slice(8 * HOP, 16 * HOP)

    def rel_diff(u, v):
        u, v = u[mid], v[mid]
        return float(np.sqrt(np.mean((u - v) ** 2)) / np.std(u))

    a, b = windows[0].audio[0, 36 * HOP:60 * HOP], windows[1].audio[0, 0:24 * HOP]
    assert rel_diff(a, b) < 0.01
    assert rel_diff(a, windows[1].audio[0, 36 * HOP:60 * HOP]) > 0.05


def test_stereo_output_shape(engines):
    out = engines["stereo"].generate(req(33), Steps())
    assert out.audio.shape == (2, 33 * HOP) and out.audio.dtype == np.float32
    assert not np.allclose(out.audio[0], out.audio[1])


def test_handoff_roundtrip_and_header(engines):
    codes = np.arange(4 * 7, dtype=np.int64).reshape(4, 7) % 64
    data = mg.encode_handoff(codes, "m", "rev", 1)
    header, back = mg.decode_handoff(data)
    np.testing.assert_array_equal(back, codes)
    assert header["codebooks"] == 4 and header["frames"] == 7 and header["model"] == "m"
    assert len(data) < 12 + 300 + 4 * 7 * 2 + 128


# ----------------------------------------------------------------------------------------------
# seeds, progress, cancellation


def test_same_seed_same_codes(engines):
    eng = engines["mono"]
    a = eng.generate(req(40, seed=5, top_k=50, top_p=0.9, temperature=1.2), Steps())
    b = eng.generate(req(40, seed=5, top_k=50, top_p=0.9, temperature=1.2), Steps())
    c = eng.generate(req(40, seed=6, top_k=50, top_p=0.9, temperature=1.2), Steps())
    np.testing.assert_array_equal(codes_of(a), codes_of(b))
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(codes_of(a), codes_of(c))


def test_progress_every_step_and_exception_stops_and_frees(engines, monkeypatch):
    eng = engines["mono"]
    steps = Steps()
    eng.generate(req(30), steps)
    assert steps.calls == [(i, 33) for i in range(1, 34)]

    windows = []
    real = DecodeLoop.new_window

    def spy(self, *a, **k):
        w = real(self, *a, **k)
        windows.append(w)
        return w

    monkeypatch.setattr(DecodeLoop, "new_window", spy)
    stopper = Steps(stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        eng.generate(req(30), stopper)
    assert len(stopper.calls) == 5  # stopped within the step that raised
    assert windows[-1].k_cache is None and windows[-1].noise is None  # per-window buffers dropped
    out = eng.generate(req(30), Steps())  # and the engine is still usable
    assert out.audio.shape == (1, 30 * HOP)


def test_out_of_memory_is_transient_with_context(engines, monkeypatch):
    eng = engines["mono"]

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(eng.loop, "generate", oom)
    with pytest.raises(TransientEngineError) as err:
        eng.generate(req(40, context=0), Steps())
    msg = str(err.value)
    assert f"model={eng.model}" in msg and "batch=2" in msg and "window=40 frames" in msg


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kwargs,field", [
    (dict(n=1501), "n_frames"),
    (dict(n=0), "n_frames"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(cfg=0.5), "cfg"),
    (dict(context=10), "handoff"),
    (dict(n=20, context=20, handoff=b"x"), "context_frames"),
    (dict(context=10, handoff=b"PROCEDURAL-STATE"), "handoff"),
])
def test_bad_requests_name_the_field(engines, kwargs, field):
    with pytest.raises(EngineError, match=rf"^{field}: "):
        engines["mono"].generate(req(**kwargs), Steps())


def test_window_over_30_s_is_rejected_clearly(engines):
    with pytest.raises(EngineError, match=r"n_frames: a window of 1600 frames \(32 s\) exceeds .*30 s"):
        engines["mono"].generate(req(1600), Steps())


def test_mono_and_stereo_handoffs_do_not_mix(engines):
    first = engines["stereo"].generate(req(20), Steps())
    with pytest.raises(EngineError, match="handoff: 8 codebooks"):
        engines["mono"].generate(req(20, context=10, handoff=first.handoff), Steps())
    with pytest.raises(EngineError, match="context_frames: 30 exceeds the 20 frames"):
        engines["stereo"].generate(req(40, context=30, handoff=first.handoff), Steps())


# ----------------------------------------------------------------------------------------------
# sampling and quantization


def test_draw_follows_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = logits.softmax(-1)[0]
    n = 20000
    g = torch.Generator().manual_seed(0)
    noise = torch.empty((n, 1, 6)).exponential_(generator=g)

    def draw(sp, width=6):
        return torch.stack([pick(logits, sp, noise[i, :, :width]) for i in range(n)]).flatten()

    full = torch.bincount(draw(SamplingConfig(top_k=0)), minlength=6) / n
    assert torch.allclose(full, probs, atol=0.015)
    top2 = torch.bincount(draw(SamplingConfig(top_k=2), 2), minlength=6) / n
    assert top2[2:].sum() == 0 and abs(top2[0] - probs[0] / probs[:2].sum()) < 0.015
    # top-p 0.7: the nucleus is the smallest set of most likely tokens with mass >= 0.7 (here: 2 tokens)
    nucleus = torch.bincount(draw(SamplingConfig(top_k=0, top_p=0.7)), minlength=6) / n
    assert nucleus[2:].sum() == 0
    hot = torch.bincount(draw(SamplingConfig(top_k=0, temperature=0.25)), minlength=6) / n
    assert torch.allclose(hot, (logits / 0.25).softmax(-1)[0], atol=0.015)
    assert pick(logits, SamplingConfig(greedy=True), None).item() == 0


def test_int8_quantized_engine(ckpts):
    eng = mg.load_engine(str(ckpts["mono"]), Settings(device="cpu", quantize="int8"))
    a = eng.generate(req(30, seed=3), Steps())
    b = eng.generate(req(30, seed=3), Steps())
    np.testing.assert_array_equal(codes_of(a), codes_of(b))
    assert a.details["quantize"] == "int8-dynamic" and a.audio.shape == (1, 30 * HOP)
    nxt = eng.generate(req(30, context=10, handoff=a.handoff, seed=4), Steps())
    np.testing.assert_array_equal(codes_of(nxt)[:, :10], codes_of(a)[:, -10:])


def test_a_window_refuses_a_handoff_from_another_model(engines):
    """One model per song: the hand-off state names model and revision; another model's is refused (not retried)."""
    first = engines["mono"].generate(req(20), Steps())
    header, codes = mg.decode_handoff(first.handoff)
    for model, revision in ((header["model"], "sha256:other"), ("facebook/musicgen-small", header["revision"])):
        forged = mg.encode_handoff(codes, model, revision, 1)
        with pytest.raises(EngineError, match="handoff: the previous window was made by .* one model"):
            engines["mono"].generate(req(20, context=10, handoff=forged), Steps())
    engines["mono"].generate(req(20, context=10, handoff=first.handoff), Steps())  # its own hand-off continues
