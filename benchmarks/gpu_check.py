"""GPU check (issue 12): stock transformers MusicGen `generate` vs the engine's decode loop in ms/step, and
the loop's greedy codes against stock generate's -- ready for the first CUDA machine lent.

Needs only torch, transformers and numpy, the repo on PYTHONPATH (benchmarks/gpu_check.sh sets it): random
weights built directly on the device in the dtype measured, nothing downloaded or initialised on the CPU.
Progress on stderr, one table on stdout. A global deadline (--budget-s from process start) keeps the run
within 6 minutes on one H100: cells left when it passes print "skipped (time)"; out of memory, "OOM".
`--cpu-smoke`: the same code on CPU (one thread), tiny architectures, fp32, few steps (the test).
Exit status 1 when the fp32 greedy check fails or a cell errors (OOM aside); 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

T0 = time.monotonic()  # the deadline counts torch's and transformers' imports too
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch
import transformers

from longsong.engines.musicgen.loop import DecodeLoop
from longsong.engines.musicgen.sampling import SamplingConfig

# decoder (hidden, layers, heads, ffn) of facebook/musicgen-small / -medium / -large
ARCH = {"small": (1024, 24, 16, 4096), "medium": (1536, 48, 24, 6144), "large": (2048, 48, 32, 8192)}
TINY = {"tiny-s": (64, 2, 4, 256), "tiny-m": (96, 3, 4, 384), "tiny-l": (128, 2, 8, 512)}
T5_BASE = {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_heads": 12, "num_layers": 2}
T5_TINY = {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 1}
CODEBOOKS = 4
SAMPLING = SamplingConfig()  # the project's defaults: CFG 3.0, top-k 250, temperature 1
GREEDY = SamplingConfig(greedy=True, cfg=3.0)
WINDOWS = ((40, 0, 0), (32, 8, 3), (24, 0, 6))  # greedy check: (frames, prompt frames, step it joins a batch)
DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Setup:
    device: torch.device
    archs: dict
    text: dict  # T5Config fields
    vocab: int  # codebook entries; pad/BOS = vocab
    max_pos: int
    batches: tuple
    dtypes: tuple
    warmup: int
    steps: int
    deadline: float  # time.monotonic() after which no cell starts
    reserve: float  # seconds a model build needs before the deadline
    cuda: bool


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def log_error(what: str, exc: BaseException) -> None:
    log(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")


def sync(st: Setup) -> None:
    if st.cuda:
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_model(st: Setup, arch: str, dtype: torch.dtype):
    """Random MusicgenForConditionalGeneration, its weights initialised once, on st.device in `dtype` (default
    dtype and device set around construction). EnCodec is minimal: never decoded."""
    tf = transformers
    hidden, layers, heads, ffn = st.archs[arch]
    text = tf.T5Config(**st.text, relative_attention_num_buckets=32, feed_forward_proj="relu", dropout_rate=0.0)
    audio = tf.EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4],
                             codebook_size=st.vocab, target_bandwidths=[2.2], hidden_size=16, codebook_dim=16,
                             num_filters=4, num_residual_layers=1, num_lstm_layers=1, chunk_length_s=None,
                             overlap=None, normalize=False)
    dec = tf.MusicgenDecoderConfig(vocab_size=st.vocab, max_position_embeddings=st.max_pos, num_codebooks=CODEBOOKS,
                                   audio_channels=1, pad_token_id=st.vocab, bos_token_id=st.vocab, dropout=0.0,
                                   activation_function="gelu", hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, ffn_dim=ffn)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with st.device:
            torch.manual_seed(0)
            config = tf.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=dec)
            model = tf.MusicgenForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(before)
    model.generation_config = tf.GenerationConfig(do_sample=True, guidance_scale=3.0, max_length=st.max_pos,
                                                  pad_token_id=st.vocab, decoder_start_token_id=st.vocab,
                                                  bos_token_id=st.vocab)
    return model.eval().requires_grad_(False)


def text_inputs(st: Setup, batch: int, seed: int = 1):
    ids = torch.randint(5, st.text["vocab_size"] - 1, (batch, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = 1  # </s>
    return ids.to(st.device), torch.ones_like(ids).to(st.device)


@torch.inference_mode()
def text_states(model, ids, mask):
    """(B, S, D_decoder) as MusicGenEngine.text_states builds them: the encoder, then enc_to_dec_proj."""
    states = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    return states


def stock_generate(st: Setup, model, ids, mask, marks=(), **kw):
    """Stock generate with a logits processor that syncs and timestamps the steps in `marks` (call 0 follows
    the prefill) and keeps the first call's raw logits (CFG runs after it: generate appends its processor to
    those passed); the closing EnCodec decode skipped. Returns (codes (B, K, n), step times, first logits)."""
    calls, times, first, seen = [0], [], [], []

    def clock(input_ids, scores):
        if calls[0] == 0:
            first.append(scores.float().clone())
        if calls[0] in marks:
            sync(st)
            times.append(time.perf_counter())
        calls[0] += 1
        return scores

    def no_decode(codes, *a, **k):
        seen.append(codes)
        return SimpleNamespace(audio_values=torch.zeros(1, 1, 1, device=codes.device))

    model.audio_encoder.decode = no_decode
    try:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, guidance_scale=SAMPLING.cfg,
                           logits_processor=transformers.LogitsProcessorList([clock]), **kw)
    finally:
        del model.audio_encoder.decode
    return seen[0][0], times, first[0]


def stock_ms(st: Setup, model, batch: int) -> float:
    """B prompts in one generate call (2B rows under CFG)."""
    _, times, _ = stock_generate(st, model, *text_inputs(st, batch), marks=(st.warmup, st.warmup + st.steps),
                                 do_sample=True, top_k=SAMPLING.top_k, temperature=SAMPLING.temperature,
                                 max_new_tokens=st.warmup + st.steps + 1)
    return (times[1] - times[0]) * 1e3 / st.steps


def eager_ms(st: Setup, model, loop: DecodeLoop, batch: int) -> float:
    """B windows (each its CFG pair) prefilled alone, then stepped together: ms per step of the batch."""
    ids, mask = text_inputs(st, batch)
    states, wins = text_states(model, ids, mask), []
    try:
        with torch.inference_mode():
            for i in range(batch):
                wins.append(loop.start(states[i:i + 1], mask[i:i + 1], None, st.warmup + st.steps + 1, SAMPLING,
                                       seed=i))
            for k in range(st.warmup + st.steps):
                if k == st.warmup:
                    sync(st)
                    t0 = time.perf_counter()
                loop.step(wins)
            sync(st)
            return (time.perf_counter() - t0) * 1e3 / st.steps
    finally:
        for w in wins:
            w.release()


def graph_ms(st: Setup, model, loop: DecodeLoop) -> str:
    """One window through loop.generate in CUDA-graph mode (the mode shown when capture fell back)."""
    ids, mask = text_inputs(st, 1)
    marks = {}

    def on_step(done, total):
        if done in (st.warmup, st.warmup + st.steps):
            sync(st)
            marks[done] = time.perf_counter()

    res = loop.generate(text_states(model, ids, mask), mask, None, st.warmup + st.steps + 1, SAMPLING, seed=0,
                        on_step=on_step)
    ms = (marks[st.warmup + st.steps] - marks[st.warmup]) * 1e3 / st.steps
    return f"{ms:.2f}" if res.mode == "cuda-graph" else f"{ms:.2f} ({res.mode})"


class Cells:
    """The table's cells: one measurement each, under the deadline, out of memory and errors reported."""

    def __init__(self, st: Setup):
        self.st, self.values, self.errors = st, {}, 0

    def run(self, key, fn, *args) -> None:
        if time.monotonic() > self.st.deadline:
            self.values[key] = "skipped (time)"
            return
        try:
            out = fn(*args)
            self.values[key] = out if isinstance(out, str) else f"{out:.2f}"
        except torch.OutOfMemoryError:
            self.values[key] = "OOM"
        except Exception as exc:  # noqa: BLE001 - report the cell, go on with the others, exit 1 at the end
            self.values[key] = "error"
            self.errors += 1
            log_error(" ".join(map(str, key)), exc)
        if self.values[key] == "OOM":
            free()
        log(f"{' '.join(map(str, key))}: {self.values[key]}")

    def group(self, arch: str, dtype: torch.dtype) -> None:
        """Every cell of one (arch, dtype): stock first, on the model as built (the loop re-lays its weights)."""
        st, dt = self.st, DTYPE_NAME[dtype]
        keys = [(arch, b, kind, dt) for b in st.batches for kind in ("stock", "eager", "graph")]
        if time.monotonic() > st.deadline - st.reserve:
            self.values.update({k: "skipped (time)" for k in keys})
            return
        model = loop = None
        try:
            t0 = time.perf_counter()
            model = build_model(st, arch, dtype)
            n = sum(p.numel() for p in model.decoder.parameters())
            log(f"{arch} {dt}: decoder {n / 1e6:.1f} M params, built in {time.perf_counter() - t0:.1f} s")
            for b in st.batches:
                self.run((arch, b, "stock", dt), stock_ms, st, model, b)
            loop = DecodeLoop(model)
            for b in st.batches:
                self.run((arch, b, "eager", dt), eager_ms, st, model, loop, b)
            for b in st.batches:
                if not st.cuda or b > 1:  # the CUDA graph runs one window
                    self.values[(arch, b, "graph", dt)] = "n/a" if st.cuda else "n/a (cpu)"
                else:
                    self.run((arch, b, "graph", dt), graph_ms, st, model, loop)
        except torch.OutOfMemoryError:
            self.values.update({k: "OOM" for k in keys if k not in self.values})
        except Exception as exc:  # noqa: BLE001 - building the model or the loop: the group's cells fail
            self.errors += 1
            log_error(f"{arch} {dt}", exc)
            self.values.update({k: "error" for k in keys if k not in self.values})
        finally:
            del model, loop
            free()


def stock_greedy(st: Setup, model, w):
    """(K, n) codes of stock greedy generate for window w, and its first step's raw logits (2, K, V)."""
    kw = {} if w.prompt is None else {"decoder_input_ids": w.prompt.to(st.device)}
    codes, _, first = stock_generate(st, model, w.ids, w.mask, do_sample=False,
                                     max_new_tokens=w.n - w.m + CODEBOOKS - 1, **kw)
    return codes[0].cpu(), first.view(2, CODEBOOKS, -1)


def batched_greedy(loop: DecodeLoop, wins) -> tuple[list, torch.Tensor]:
    """Continuous batching: window i joins the batch at step wins[i].join and leaves it when done. Each
    window's codes, and window 0's first-step logits."""
    out, active, step, first = {}, {}, 0, None
    try:
        with torch.inference_mode():
            while len(out) < len(wins):
                for i, w in enumerate(wins):
                    if i not in active and i not in out and w.join <= step:
                        active[i] = loop.start(w.states, w.mask, w.prompt, w.n, GREEDY, seed=0)
                        first = active[0].logits.clone() if i == 0 else first
                loop.step(list(active.values()))
                step += 1
                for i in [i for i, h in active.items() if h.done]:
                    h = active.pop(i)
                    out[i] = loop.result(h, wins[i].m, "eager").codes
                    h.release()
    finally:
        for h in active.values():
            h.release()
    return [out[i] for i in range(len(wins))], first


def compare(refs, got, wins, exact: bool) -> tuple[bool, str]:
    """Sampled tokens equal (the prompt frames are forced): 'ok' / 'MISMATCH', or the fraction equal."""
    equal = total = 0
    where = ""
    for i, (r, g, w) in enumerate(zip(refs, got, wins)):
        same = r[:, w.m:] == g[:, w.m:]
        equal, total = equal + int(same.sum()), total + same.numel()
        bad = (~same).any(dim=0).nonzero()
        if not where and len(bad):
            where = f"; window {i} first differs at frame {w.m + int(bad[0])}"
    ok = equal == total
    if exact:
        return ok, ("ok" if ok else "MISMATCH") + f" ({equal}/{total} tokens equal{where})"
    return ok, f"{100 * equal / total:.1f}% of {total} tokens equal{where}"


def greedy_check(st: Setup, arch: str, dtype: torch.dtype, exact: bool) -> tuple[bool, list[str]]:
    """Windows of one model (one continuing a prompt), greedy, vs stock generate on each alone: ours alone
    (eager; CUDA graph) and stepped together joining at different steps. Raises nothing: a failure is a line."""
    model = None
    try:
        model = build_model(st, arch, dtype)
        wins = []
        for i, (n, m, join) in enumerate(WINDOWS):
            ids, mask = text_inputs(st, 1, seed=10 + i)
            prompt = torch.randint(0, st.vocab, (CODEBOOKS, m), generator=torch.Generator().manual_seed(i))
            wins.append(SimpleNamespace(ids=ids, mask=mask, states=text_states(model, ids, mask), n=n, m=m,
                                        join=join, prompt=prompt if m else None))
        refs, firsts = zip(*(stock_greedy(st, model, w) for w in wins))
        loop = DecodeLoop(model)
        alone = [loop.generate(w.states, w.mask, w.prompt, w.n, GREEDY, seed=0, static=False).codes for w in wins]
        together, first = batched_greedy(loop, wins)
        joins = "/".join(str(j) for *_, j in WINDOWS)
        rows = [("eager, each window alone", compare(refs, alone, wins, exact)),
                (f"eager, {len(wins)} windows stepped together (joining at steps {joins})",
                 compare(refs, together, wins, exact))]
        if st.cuda:
            graph = [loop.generate(w.states, w.mask, w.prompt, w.n, GREEDY, seed=0) for w in wins]
            rows.append((f"{'/'.join(sorted({r.mode for r in graph}))}, each window alone",
                         compare(refs, [r.codes for r in graph], wins, exact)))
        else:
            rows.append(("cuda-graph", (True, "n/a (cpu)")))
        diff, scale = float((first - firsts[0]).abs().max()), float(firsts[0].abs().max())
        rows.append(("first-step logits, max |ours - stock| (window 0)",
                     (True, f"{diff:.3g} (max |logit| {scale:.3g})")))
        return all(ok for _, (ok, _) in rows), [f"  {label:<58} {text}" for label, (_, text) in rows]
    except Exception as exc:  # noqa: BLE001 - the table still prints; the run exits 1
        log_error(f"greedy check {DTYPE_NAME[dtype]}", exc)
        return False, [f"  error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"]
    finally:
        del model
        free()


def table(st: Setup, cells: Cells) -> list[str]:
    """One row per arch x batch; the last column: stock ms/step over our best (eager or graph), first dtype."""
    def num(arch, b, kind, dt):
        head = cells.values.get((arch, b, kind, dt), "").split(" ")[0]
        return float(head) if head.replace(".", "", 1).isdigit() else None

    dts = [DTYPE_NAME[d] for d in st.dtypes]
    cols = [(kind, dt) for kind in ("stock", "eager", "graph") for dt in dts]
    head = f"{'arch':<8} {'batch':>5}" + "".join(f" | {k + ' ' + d:>14}" for k, d in cols)
    lines = [head + f" | {'stock/ours ' + dts[0]:>16}"]
    lines.append("-" * len(lines[0]))
    for arch in st.archs:
        for b in st.batches:
            vals = [cells.values.get((arch, b, k, d), "skipped (time)") for k, d in cols]
            stock, ours = num(arch, b, "stock", dts[0]), [num(arch, b, k, dts[0]) for k in ("eager", "graph")]
            ours = [v for v in ours if v]
            ratio = f"{stock / min(ours):.2f}x" if stock and ours else "-"
            lines.append(f"{arch:<8} {b:>5}" + "".join(f" | {v:>14}" for v in vals) + f" | {ratio:>16}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny architectures on CPU, fp32 (the test)")
    ap.add_argument("--budget-s", type=float, help="global deadline (default 300 s; smoke 50 s)")
    ap.add_argument("--steps", type=int, help="timed steps per cell (default 24; smoke 4)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per cell (default 6; smoke 2)")
    ap.add_argument("--archs", help="comma-separated subset (small,medium,large)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); try --cpu-smoke", file=sys.stderr)
        return 2
    if smoke:
        torch.set_num_threads(1)
    archs = TINY if smoke else ARCH
    archs = {a: archs[a] for a in args.archs.split(",")} if args.archs else archs
    budget = (50 if smoke else 300) if args.budget_s is None else args.budget_s
    st = Setup(device=torch.device("cpu" if smoke else "cuda"), archs=archs, text=T5_TINY if smoke else T5_BASE,
               vocab=64 if smoke else 2048, max_pos=256 if smoke else 2048, batches=(1, 4, 16),
               dtypes=(torch.float32,) if smoke else (torch.float16, torch.bfloat16),
               warmup=args.warmup or (2 if smoke else 6), steps=args.steps or (4 if smoke else 24),
               deadline=T0 + budget, reserve=0 if smoke else 20, cuda=not smoke)
    name = "cpu" if smoke else torch.cuda.get_device_name()
    log(f"device {name}; archs {', '.join(archs)}; {st.warmup} warm-up + {st.steps} timed steps per cell")

    check = next(iter(archs))
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 without TF32: where exact equality is expected
    try:
        exact_ok, exact_lines = greedy_check(st, check, torch.float32, True)
    finally:
        torch.set_float32_matmul_precision(precision)
    log("greedy check fp32: " + ("ok" if exact_ok else "MISMATCH or error"))
    _, agree_lines = greedy_check(st, check, st.dtypes[0], False)
    cells = Cells(st)
    for arch in archs:
        for dtype in st.dtypes:
            cells.group(arch, dtype)

    print(f"gpu_check on {name}: torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"ms per decoding step, mean of {st.steps} steps after {st.warmup} warm-up, from context 0; CFG "
          f"{SAMPLING.cfg} (2 rows per prompt), top-k {SAMPLING.top_k}, temperature {SAMPLING.temperature}; "
          f"batch B: stock = B prompts in one generate call, eager = B windows stepped together, graph = one "
          f"window; text encoder T5 width {st.text['d_model']}, {st.text['num_layers']} layer(s) (runs once per "
          f"window, not timed); EnCodec decode not timed")
    print("\n".join(table(st, cells)))
    print(f"greedy check, {check} arch, fp32 (TF32 off), windows of {'/'.join(str(n) for n, *_ in WINDOWS)} "
          f"frames (the second continuing a {WINDOWS[1][1]}-frame prompt), ours vs stock generate on each alone:")
    print("\n".join(exact_lines))
    print(f"{DTYPE_NAME[st.dtypes[0]]} agreement, same windows (kernels may differ: informational):")
    print("\n".join(agree_lines))
    print(f"total {time.monotonic() - T0:.0f} s; cell errors {cells.errors}")
    return 0 if exact_ok and cells.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
