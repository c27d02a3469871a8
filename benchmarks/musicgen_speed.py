"""MusicGen decode speed: stock transformers `generate` vs the engine's own decode loop (issue 3).

Not a test. Builds randomly initialised models with the exact facebook/musicgen-small architecture
(decoder width 1024, 24 layers, 16 heads, 4 codebooks of 2048; T5-base text encoder; 32 kHz EnCodec
with hop 640) -- and musicgen-medium (width 1536, 48 layers, 24 heads) with --medium or when memory
allows in a full run -- and reports, side by side in one run and at the same settings (CFG 3.0,
top-k 250, temperature 1, batch 2 = conditional + unconditional):

- ms per decoding step at context 0 / 750 / 1500 frames (median over timed steps; the prefill is
  timed separately),
- the real-time factor of one 30 s window and of a 3-minute song (10 windows of the project's plan:
  30 s windows, 12 s token context), extrapolated from the per-step figures (linear in the position)
  plus measured prefill and EnCodec decode times; a full run also generates one real 30 s window
  with the engine (and with stock generate on CUDA) to check the extrapolation,
- peak memory of each phase (CPU: peak RSS of the process, VmHWM reset per phase; CUDA: peak
  allocated),
for stock generate, the engine's loop in float32, int8 dynamic quantization (CPU) and float16 with
a CUDA graph (CUDA). Runs unchanged on CPU or CUDA (device auto, or --device).

    python benchmarks/musicgen_speed.py --quick   # small, context 0 only, < 3 min on 2 cores
    python benchmarks/musicgen_speed.py           # full

The last line always reads: RESULT ... stock X ms/step | engine ... Y ms/step (ratio) ...
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from longsong.engines.musicgen.engine import MAX_WINDOW_FRAMES  # noqa: E402
from longsong.engines.musicgen.loop import DecodeLoop  # noqa: E402
from longsong.engines.musicgen.sampling import SamplingConfig  # noqa: E402
from longsong.frames import FRAME_RATE  # noqa: E402
from longsong.settings import Settings  # noqa: E402

ARCH = {
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096),
    "medium": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, ffn_dim=6144),
}
WINDOW = MAX_WINDOW_FRAMES  # one 30 s window
SONG_S = 180.0
SAMPLING = SamplingConfig()  # the project's defaults (longsong.request.Sampling)


# ----------------------------------------------------------------------------------------------
# memory


class Peak:
    """Peak memory of a phase: CUDA peak allocated, or the process's peak RSS (VmHWM reset)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.base = _rss()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _hwm()
        return False

    @property
    def gib(self) -> float:
        return self.peak / 2**30

    @property
    def extra_gib(self) -> float:
        return (self.peak - self.base) / 2**30


def _status(key: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss() -> int:
    return _status("VmRSS")


def _hwm() -> int:
    return _status("VmHWM") or _rss()


def available_gib() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


# ----------------------------------------------------------------------------------------------
# model


def build_model(size: str, device: torch.device, seed: int = 0, layers: int | None = None):
    """Random weights, the exact architecture of `size`; `layers` trims the decoder (quick runs)."""
    from transformers import (
        EncodecConfig,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    relative_attention_num_buckets=32, feed_forward_proj="relu", dropout_rate=0.1)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                          target_bandwidths=[2.2], hidden_size=128, codebook_dim=128, num_filters=64,
                          num_residual_layers=1, num_lstm_layers=2, norm_type="weight_norm", use_causal_conv=False,
                          compress=2, use_conv_shortcut=False, chunk_length_s=None, overlap=None, normalize=False,
                          pad_mode="reflect", kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
                          dilation_growth_rate=2, trim_right_ratio=1.0)
    dec = MusicgenDecoderConfig(vocab_size=2048, max_position_embeddings=2048, num_codebooks=4, audio_channels=1,
                                pad_token_id=2048, bos_token_id=2048, dropout=0.1, activation_function="gelu",
                                **{**ARCH[size], **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=dec))
    model.generation_config = GenerationConfig(do_sample=True, guidance_scale=3.0, max_length=1500, pad_token_id=2048,
                                               decoder_start_token_id=2048, bos_token_id=2048)
    model.eval().requires_grad_(False)
    return model.to(device)


def decoder_params(model) -> int:
    return sum(p.numel() for p in model.decoder.parameters())


def resident_gib(model, int8: bool) -> float:
    """Weights a serving engine keeps resident (text encoder + EnCodec + decoder): float32, or with the
    decoder's per-step linear layers in int8 (+ per-channel scales) and their float copies freed, as
    MusicGenEngine does with LONGSONG_QUANTIZE=int8. Counted from the tensors, unique storages once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    if int8:
        core = model.decoder.model.decoder
        lins = [m for layer in core.layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                      layer.self_attn.v_proj, layer.self_attn.out_proj,
                                                      layer.encoder_attn.q_proj, layer.encoder_attn.out_proj,
                                                      layer.fc1, layer.fc2)] + list(model.decoder.lm_heads)
        for m in lins:
            total -= m.weight.numel() * (m.weight.element_size() - 1)  # int8 instead of float
            total += m.weight.shape[0] * 12  # per-channel scale (double) + zero point (int32)
    return total / 2**30


# ----------------------------------------------------------------------------------------------
# timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interp(points: dict[int, float], x: float) -> float:
    """Linear between the measured contexts, flat below the first, extrapolated past the last."""
    pts = sorted(points.items())
    if len(pts) == 1 or x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


@dataclass
class Run:
    label: str
    steps_ms: dict[int, float] = field(default_factory=dict)  # context -> median ms/step
    prefill_s: dict[int, float] = field(default_factory=dict)  # context -> seconds to the first token
    peak: dict[int, tuple[float, float]] = field(default_factory=dict)  # context -> (peak GiB, extra GiB)
    full_window_s: float | None = None

    def step_at(self, pos: float) -> float:
        """ms/step at a cache position, linear between the measured contexts."""
        return interp(self.steps_ms, pos)

    def prefill_at(self, ctx: int) -> float:
        """Seconds of a prefill of `ctx` frames (to the first token), linear between measured contexts."""
        pts = sorted((c, v) for c, v in self.prefill_s.items())
        if ctx <= pts[0][0]:
            return pts[0][1]
        if len(pts) == 1:
            raise ValueError("no prefill measured at a context > 0")
        for (c0, v0), (c1, v1) in zip(pts, pts[1:]):
            if ctx <= c1:
                return v0 + (v1 - v0) * (ctx - c0) / (c1 - c0)
        return pts[-1][1] * ctx / max(pts[-1][0], 1)


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        print(f"  {fn.__name__}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
        return None


def _failed(run: Run, ctx: int, exc: BaseException) -> None:
    print(f"  {run.label:<22} ctx {ctx:>4}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
          flush=True)
    run.steps_ms[ctx] = float("nan")
    run.prefill_s[ctx] = float("nan")
    run.peak[ctx] = (float("nan"), float("nan"))


class StepClock:
    """A logits processor that only timestamps stock generate's steps."""

    def __init__(self, device):
        self.times: list[float] = []
        self.device = device

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def text_inputs(model, device, n_tokens: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 32000, (1, n_tokens), generator=g)
    ids[0, -1] = 1
    return ids.to(device), torch.ones_like(ids).to(device)


def random_codes(k: int, n: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (k, n), generator=g)


def time_stock(model, device, contexts, steps: int, label: str) -> Run:
    from transformers import LogitsProcessorList

    run = Run(label)
    ids, mask = text_inputs(model, device)
    real_decode = model.audio_encoder.decode

    def no_decode(codes, *a, **kw):  # the audio decode is timed separately
        from types import SimpleNamespace

        return SimpleNamespace(audio_values=torch.zeros(1, 1, 1, device=device))

    model.audio_encoder.decode = no_decode
    try:
        for ctx in contexts:
            clock = StepClock(device)
            kw = {}
            if ctx:
                kw["decoder_input_ids"] = random_codes(4, ctx).to(device)
            try:
                with Peak(device) as pk, torch.inference_mode():
                    _sync(device)
                    t0 = time.perf_counter()
                    model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=SAMPLING.cfg,
                                   top_k=SAMPLING.top_k, temperature=SAMPLING.temperature, max_new_tokens=steps + 1,
                                   logits_processor=LogitsProcessorList([clock]), **kw)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
                _failed(run, ctx, exc)
                continue
            diffs = [b - a for a, b in zip(clock.times, clock.times[1:])]
            run.steps_ms[ctx] = statistics.median(diffs) * 1e3
            run.prefill_s[ctx] = clock.times[0] - t0
            run.peak[ctx] = (pk.gib, pk.extra_gib)
            print(f"  {label:<22} ctx {ctx:>4}: {run.steps_ms[ctx]:8.1f} ms/step  prefill {run.prefill_s[ctx]:6.2f} s  "
                  f"peak {pk.gib:5.2f} GiB (+{pk.extra_gib:.2f})", flush=True)
    finally:
        model.audio_encoder.decode = real_decode
    return run


def engine_states(model, device, dtype):
    ids, mask = text_inputs(model, device)
    with torch.inference_mode():
        st = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if getattr(model, "enc_to_dec_proj", None) is not None:
            st = model.enc_to_dec_proj(st.to(model.enc_to_dec_proj.weight.dtype))
    return st.to(dtype), mask


def time_engine(loop: DecodeLoop, model, device, contexts, steps: int, label: str) -> Run:
    run = Run(label)
    states, mask = engine_states(model, device, loop.dtype)
    for ctx in contexts:
        times: list[float] = []

        def on_step(done, total):
            if done:  # done == 0: the prefill's per-layer heart-beat ticks
                _sync(device)
                times.append(time.perf_counter())

        prompt = random_codes(4, ctx) if ctx else None
        n = ctx + steps - loop.channel_codebooks + 2  # steps + 1 tokens after the prefill
        try:
            with Peak(device) as pk:
                _sync(device)
                t0 = time.perf_counter()
                loop.generate(states, mask, prompt, n, SAMPLING, seed=3, on_step=on_step)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
            _failed(run, ctx, exc)
            continue
        diffs = [b - a for a, b in zip(times, times[1:])]
        run.steps_ms[ctx] = statistics.median(diffs) * 1e3
        run.prefill_s[ctx] = times[0] - t0
        run.peak[ctx] = (pk.gib, pk.extra_gib)
        print(f"  {label:<22} ctx {ctx:>4}: {run.steps_ms[ctx]:8.1f} ms/step  prefill {run.prefill_s[ctx]:6.2f} s  "
              f"peak {pk.gib:5.2f} GiB (+{pk.extra_gib:.2f})", flush=True)
    return run


def full_window_engine(loop: DecodeLoop, model, device) -> float:
    states, mask = engine_states(model, device, loop.dtype)
    _sync(device)
    t0 = time.perf_counter()
    loop.generate(states, mask, None, WINDOW, SAMPLING, seed=4)
    _sync(device)
    return time.perf_counter() - t0


def full_window_stock(model, device) -> float:
    ids, mask = text_inputs(model, device)
    real_decode = model.audio_encoder.decode
    from types import SimpleNamespace

    model.audio_encoder.decode = lambda *a, **k: SimpleNamespace(audio_values=torch.zeros(1, 1, 1, device=device))
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=SAMPLING.cfg,
                           top_k=SAMPLING.top_k, max_new_tokens=WINDOW + 3)
        _sync(device)
        return time.perf_counter() - t0
    finally:
        model.audio_encoder.decode = real_decode


def time_codec(model, device, frames: int = WINDOW) -> tuple[float, float]:
    """(text-encoder seconds, EnCodec decode seconds of one 30 s window, scaled from `frames`)."""
    ids, mask = text_inputs(model, device)
    codes = random_codes(4, frames).to(device)
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        model.text_encoder(input_ids=ids, attention_mask=mask)
        _sync(device)
        t1 = time.perf_counter()
        model.audio_encoder.decode(codes[None, None], [None])
        _sync(device)
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) * WINDOW / frames


# ----------------------------------------------------------------------------------------------
# real-time factors


def song_windows(duration_s: float = SONG_S) -> list[tuple[int, int]]:
    """(n_frames, context_frames) of the project's plan for a song (30 s windows, 12 s context)."""
    from longsong.plan import make_plan
    from longsong.request import SongRequest

    plan = make_plan(SongRequest(prompt="benchmark", duration_s=duration_s), 0)
    return [(s.n_frames, s.context_frames) for s in plan.segments]


def window_seconds(run: Run, n_frames: int, context: int, text_s: float, decode_s: float, c: int = 4) -> float:
    """Estimated wall time of one window: text + prefill + sum of per-step times + audio decode."""
    s = context + 1
    last = n_frames + c
    steps = sum(run.step_at(p) for p in range(s, last)) / 1e3
    return text_s + run.prefill_at(context) + steps + decode_s * n_frames / WINDOW


def rtf_table(runs: list[Run], text_s: float, decode_s: float) -> list[tuple[str, float, float | None]]:
    """(label, RTF of one 30 s window from text, RTF of a 3-minute song or None without context figures)."""
    song = song_windows()
    out = []
    for run in runs:
        w = window_seconds(run, WINDOW, 0, text_s, decode_s)
        try:
            total = sum(window_seconds(run, n, c, text_s, decode_s) for n, c in song) / SONG_S
        except ValueError:
            total = None
        out.append((run.label, w / (WINDOW / FRAME_RATE), total))
    return out


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model, context 0, few steps (< 3 min on 2 cores)")
    ap.add_argument("--device", default=Settings.from_env().device, choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per context")
    ap.add_argument("--contexts", default=None, help="comma-separated contexts in frames (default 0,750,1500)")
    ap.add_argument("--medium", choices=["auto", "yes", "no"], default="auto",
                    help="also musicgen-medium (auto: on CUDA, or on CPU with > 14 GiB available; contexts 0/750)")
    ap.add_argument("--no-full-window", action="store_true", help="skip the real 30 s window runs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                          else "cpu")
    cpu = device.type == "cpu"
    contexts = [int(c) for c in (args.contexts or ("0" if args.quick else "0,750,1500")).split(",")]
    steps = args.steps or (8 if args.quick else (40 if cpu else 200))
    sizes = ["small"]
    if not args.quick and (args.medium == "yes" or (args.medium == "auto" and (not cpu or available_gib() > 14))):
        sizes.append("medium")
    full_window = not (args.quick or args.no_full_window)
    cpu_name = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f" ({torch.cuda.get_device_name()})" if not cpu else ""
    print(f"musicgen_speed: device {device}{gpu}, cpu {cpu_name}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {load():.2f}; CFG {SAMPLING.cfg}, top-k "
          f"{SAMPLING.top_k}, temperature {SAMPLING.temperature}", flush=True)
    results = {"device": str(device) + gpu, "cpu": cpu_name, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "sizes": {}}
    last = "RESULT (no figures)"
    for size in sizes:
        ctxs = contexts if size == "small" or not cpu else [c for c in contexts if c <= 750]
        n_steps = steps if size == "small" or not cpu else min(steps, 12)
        t_build = time.perf_counter()
        model = build_model(size, device)
        print(f"[{size}] decoder {decoder_params(model) / 1e6:.0f} M params, built in "
              f"{time.perf_counter() - t_build:.1f} s; contexts {ctxs}, {n_steps} timed steps each", flush=True)
        if cpu:
            print(f"  resident weights of a serving engine: fp32 {resident_gib(model, False):.2f} GiB, "
                  f"int8 {resident_gib(model, True):.2f} GiB", flush=True)
        text_s, decode_s = time_codec(model, device, frames=5 * FRAME_RATE if args.quick else WINDOW)
        print(f"  text encoder {text_s * 1e3:.0f} ms, EnCodec decode of 30 s {decode_s:.2f} s"
              f"{' (from 5 s)' if args.quick else ''}", flush=True)
        runs: list[Run] = []
        variants: list[tuple[Run, DecodeLoop, object]] = []
        full = full_window and size == "small"
        # stock first, on the model exactly as built (the engine re-lays its weights out in place)
        stock = time_stock(model, device, ctxs, n_steps, "stock generate fp32")
        runs.append(stock)
        half_engine = None
        if not cpu:
            half = copy.deepcopy(model).half()
            runs.append(time_stock(half, device, ctxs, n_steps, "stock generate fp16"))
            if full:
                stock.full_window_s = _safe(full_window_stock, model, device)
                runs[-1].full_window_s = _safe(full_window_stock, half, device)
                print(f"  stock generate: real 30 s window fp32 {stock.full_window_s} s, "
                      f"fp16 {runs[-1].full_window_s} s", flush=True)
            del half
            half_engine = copy.deepcopy(model)
            half_engine.decoder.half()
        loops = [("engine fp32", model, None)]
        if cpu:
            loops.append(("engine int8", model, "int8"))
        else:
            loops = [("engine fp32 cuda-graph", model, None), ("engine fp16 cuda-graph", half_engine, None)]
        for label, owner, quantize in loops:
            t0 = time.perf_counter()
            loop = DecodeLoop(owner, quantize=quantize)
            print(f"  {label}: prepared in {time.perf_counter() - t0:.1f} s (mode {loop.mode})", flush=True)
            run = time_engine(loop, owner, device, ctxs, n_steps, label)
            runs.append(run)
            variants.append((run, loop, owner))
        if full:
            for run, loop, owner in variants:
                run.full_window_s = _safe(full_window_engine, loop, owner, device)
                if run.full_window_s:
                    print(f"  {run.label}: real 30 s window (1503 steps, no context) {run.full_window_s:.1f} s"
                          f" = RTF {run.full_window_s / (WINDOW / FRAME_RATE):.2f} (decoder only)", flush=True)
        rtfs = rtf_table(runs, text_s, decode_s)
        print(f"[{size}] summary: ms/step at context {'/'.join(map(str, ctxs))}; RTF = wall time / audio time, "
              f"extrapolated from the per-step figures + measured prefill, text-encoder and EnCodec times; "
              f"load average now {load():.2f}")
        base = runs[0]
        size_res = {"decoder_params": decoder_params(model), "text_s": text_s, "encodec_decode_30s_s": decode_s,
                    "contexts": ctxs, "steps": n_steps, "runs": {}}
        if cpu:
            size_res["resident_gib"] = {"fp32": resident_gib(model, False), "int8": resident_gib(model, True)}
        for run, (_, rtf_w, rtf_song) in zip(runs, rtfs):
            ms = " / ".join(f"{run.steps_ms[c]:.1f}" for c in ctxs)
            ratio = " / ".join(f"{base.steps_ms[c] / run.steps_ms[c]:.2f}x" for c in ctxs)
            peak = max(p[0] for p in run.peak.values())
            extra = max(p[1] for p in run.peak.values())
            pre = ", ".join(f"{run.prefill_s[c]:.1f}" for c in ctxs if c)
            fw = f"; real window {run.full_window_s:.0f} s" if run.full_window_s else ""
            mem = "RSS" if cpu else "allocated"
            song = "n/a (no context measured)" if rtf_song is None else f"{rtf_song:.2f}"
            print(f"  {run.label:<24} {ms} ms/step  vs stock fp32 {ratio}  prefill {pre or '-'} s  "
                  f"RTF window {rtf_w:.2f}, 3-min song {song}{fw}  peak {mem} {peak:.2f} GiB (+{extra:.2f})")
            size_res["runs"][run.label] = {"ms_per_step": run.steps_ms, "prefill_s": run.prefill_s,
                                           "peak_gib": {c: p[0] for c, p in run.peak.items()},
                                           "extra_gib": {c: p[1] for c, p in run.peak.items()},
                                           "rtf_window_est": rtf_w, "rtf_song_est": rtf_song,
                                           "full_window_s": run.full_window_s}
        results["sizes"][size] = size_res
        if size == "small":
            c0 = ctxs[0]
            parts = [f"stock {base.steps_ms[c0]:.1f} ms/step"]
            for run in runs[1:]:
                if not run.label.startswith("stock"):
                    parts.append(f"{run.label} {run.steps_ms[c0]:.1f} ms/step "
                                 f"(ratio {base.steps_ms[c0] / run.steps_ms[c0]:.2f}x)")
            last = f"RESULT musicgen-small arch on {device}, context {c0}: " + " | ".join(parts)
        half_engine = None
        del model, variants, runs, loops
        gc.collect()
        if not cpu:
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(last, flush=True)
    return 0


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
