"""MusicGen continuous batching on CPU: windows per hour and per-window latency at batch 1/2/4/8, and how
close int8 stays to fp32 (issue 12).

Not a test. Builds a randomly initialised model with the exact facebook/musicgen-small architecture
(musicgen_speed.build_model) and, side by side in one run, for the engine's decode loop in fp32 and in
int8 (dynamic quantization) at the project's sampling settings (CFG 3.0 = 2 rows per window, top-k 250):

- batching: at each context c (0 / 750 / 1500 frames: each window is started alone with a prompt of c
  random frames, so its KV cache holds c + 1 positions), B windows are stepped together with
  `loop.step(batch)` for B = 1, 2, 4, 8; ms/step = median over the timed steps (after a warm-up) and is
  every window's latency per token. Windows per hour at context c: B * 3600 / (ms_step(B, c) * 1503 / 1000)
  (1503 steps = one 30 s window from text), as if every step cost what it costs at c. The "30 s window"
  aggregate integrates ms_step(B, .) over the window's 1503 positions (linear between the measured
  contexts, extrapolated past the last) and adds the B prefills (each window prefills alone before it
  joins): window_s(B) = B * prefill(0) + sum of the step times; windows/hour = B * 3600 / window_s(B),
  per-window latency = window_s(B). Peak RSS of the stepping phase (VmHWM reset; the process holds the
  fp32 model and the B windows) and the KV-cache bytes per window are reported per batch size;
- batch independence: a few windows stepped alone and then together (the logits must not depend on the
  batch-mates: bitwise in fp32, where the loop pads rows to the BLAS row tile; int8 quantizes a step's
  activations per tensor, over all rows);
- int8 fidelity: teacher-forced at each context, the fp32 loop and an int8 loop over a deep copy of the
  same model are prefilled with the same prompt and fed the same tokens (sampled from the fp32 guided
  logits, fixed noise); per step and free codebook: cosine of the logits, KL(fp32 || int8) of the
  softmax, top-1 agreement, of the conditional row and of the CFG-guided logits. Random weights give
  near-uniform distributions, so it also runs with the codebook heads re-drawn with a larger std
  (--head-std; the logits' std is then about head_std * sqrt(1024)) to get peaked distributions.

    python benchmarks/musicgen_batch.py --quick        # 4 layers, contexts 0/750, batch 1/4, < 3 min on 2 cores
    python benchmarks/musicgen_batch.py --threads 2    # full (~15 min on 2 cores)

The last line always reads: RESULT ... fp32 batch 4 X.XXx windows/h (latency Y.YYx) | int8 ... | int8 KL ...
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from musicgen_speed import (  # noqa: E402
    SAMPLING, WINDOW, Peak, _rss, build_model, decoder_params, engine_states, interp, load, random_codes,
)

from longsong.engines.musicgen.loop import DecodeLoop  # noqa: E402
from longsong.engines.musicgen.sampling import guided, pick  # noqa: E402

CPU = torch.device("cpu")
WINDOW_STEPS = WINDOW + 4 - 1  # a 30 s window from text: L = n + 4 positions, prefill of 1
TARGETS = {"fp32": (2.5, 1.6), "int8": (1.5, None)}  # batch 4: min windows/h ratio, max latency ratio


# ----------------------------------------------------------------------------------------------
# batching


def trim() -> None:
    """Hand freed heap memory back to the OS: the KV caches' per-layer blocks (~12 MB) fall under glibc's
    grown mmap threshold and stay resident after a release, so RSS would carry the last phase's windows."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def start(loop: DecodeLoop, states, mask, ctx: int, n_after: int, i: int):
    """Window i at context ctx (its own random prompt and seed), room for n_after more steps."""
    prompt = random_codes(4, ctx, seed=10 + i) if ctx else None
    return loop.start(states, mask, prompt, ctx + n_after + loop.channel_codebooks, SAMPLING, seed=100 + i)


def time_batches(loop: DecodeLoop, states, mask, contexts, batches, steps: int, warm: int) -> dict:
    """ms/step per (batch, context), prefill seconds per context, peak RSS per (batch, context). Windows are
    started lazily in ascending batch order, so the B-phase process holds exactly B windows; each phase rewinds
    its windows to their start position (the cache rows are rewritten), so every batch runs at the same context."""
    res = {"ms": {}, "prefill_s": {}, "peak": {}, "kv_bytes": {}}
    for ctx in contexts:
        ws, pre = [], []
        trim()
        base = _rss()  # before this context's windows: peak - base = the windows + the step's buffers
        for b in sorted(batches):
            with torch.inference_mode():
                while len(ws) < b:
                    t0 = time.perf_counter()
                    ws.append(start(loop, states, mask, ctx, warm + steps + 2, len(ws)))
                    pre.append(time.perf_counter() - t0)
                batch = ws[:b]
                for w in batch:
                    w.t = w.prefix
                trim()  # the prefills' transients
                times = []
                with Peak(CPU) as pk:
                    for _ in range(warm + steps):
                        t0 = time.perf_counter()
                        loop.step(batch)
                        times.append(time.perf_counter() - t0)
            ms = statistics.median(times[warm:]) * 1e3
            res["ms"][(b, ctx)] = ms
            res["peak"][(b, ctx)] = (pk.gib, (pk.peak - base) / 2**30)
            print(f"  {loop_label(loop)} ctx {ctx:>4} batch {b}: {ms:7.1f} ms/step ({ms / b:6.1f} per window-step)  "
                  f"peak RSS {pk.gib:5.2f} GiB ({(pk.peak - base) / 2**30:+.2f})  load {load():.2f}", flush=True)
        w = ws[0]
        res["kv_bytes"][ctx] = (sum(t.nbytes for t in w.k_cache + w.v_cache), w.length)
        res["prefill_s"][ctx] = statistics.median(pre)
        print(f"  {loop_label(loop)} ctx {ctx:>4}: prefill {res['prefill_s'][ctx]:.2f} s (median of {len(pre)})",
              flush=True)
        for w in ws:
            w.release()
        del ws
        trim()
    return res


def loop_label(loop: DecodeLoop) -> str:
    return "int8" if loop.quantize == "int8" else "fp32"


def window_s(res: dict, b: int, contexts) -> float:
    """Wall time of B windows from text stepped together (= each one's latency): B prefills + 1503 steps."""
    pts = {c: res["ms"][(b, c)] for c in contexts}
    steps = sum(interp(pts, t - 1) for t in range(1, WINDOW_STEPS + 1)) / 1e3
    return b * res["prefill_s"][min(contexts)] + steps


def per_hour(b: int, ms: float) -> float:
    return b * 3600 / (ms * WINDOW_STEPS / 1e3)


def batch_table(label: str, res: dict, contexts, batches) -> dict:
    """Prints the table; returns the figures (windows/h and ratios) for the JSON and the targets."""
    out = {}
    b1 = min(batches)
    head = " | ".join(f"ctx {c}: ms/step, win/h (thr x, lat x)" for c in contexts)
    print(f"\n{label}: per context [{head}] | 30 s window: s, win/h (thr x, lat x) | peak RSS GiB (+ over the process before the windows)")
    agg1 = window_s(res, b1, contexts)
    for b in batches:
        cells, row = [], {"contexts": {}}
        for c in contexts:
            ms, ms1 = res["ms"][(b, c)], res["ms"][(b1, c)]
            wh = per_hour(b, ms)
            thr, lat = wh / per_hour(b1, ms1), ms / ms1
            row["contexts"][c] = {"ms_step": ms, "windows_per_hour": wh, "throughput_x": thr, "latency_x": lat}
            cells.append(f"{ms:7.1f}, {wh:5.1f} ({thr:4.2f}x, {lat:4.2f}x)")
        ws = window_s(res, b, contexts)
        wh = b * 3600 / ws
        thr, lat = wh / (b1 * 3600 / agg1), ws / agg1
        row["window"] = {"seconds": ws, "windows_per_hour": wh, "throughput_x": thr, "latency_x": lat}
        peak = max(res["peak"][(b, c)][0] for c in contexts)
        extra = max(res["peak"][(b, c)][1] for c in contexts)
        row["peak_gib"], row["extra_gib"] = peak, extra
        print(f"  B={b}: " + " | ".join(cells) + f" | {ws:6.0f} s, {wh:5.1f} ({thr:4.2f}x, {lat:4.2f}x) | "
              f"{peak:5.2f} ({extra:+.2f})")
        out[b] = row
    nbytes, length = res["kv_bytes"][max(contexts)]
    per_pos = nbytes / length
    print(f"  KV cache: {per_pos / 1024:.0f} KiB per position per window (2 CFG rows, fp32) -> "
          f"{per_pos * (WINDOW + 4) / 2**30:.3f} GiB for a 30 s window ({WINDOW + 4} positions); "
          f"prefill s: " + ", ".join(f"ctx {c} {res['prefill_s'][c]:.2f}" for c in contexts))
    out["kv_bytes_per_position"] = per_pos
    out["kv_gib_30s_window"] = per_pos * (WINDOW + 4) / 2**30
    return out


def targets(label: str, table: dict, contexts) -> list[str]:
    """met / not met at batch 4 on the 30 s window aggregate (also shown per context)."""
    if 4 not in table:
        return []
    need_thr, max_lat = TARGETS[label]
    row = table[4]["window"]
    ok = row["throughput_x"] >= need_thr and (max_lat is None or row["latency_x"] <= max_lat)
    goal = f">= {need_thr}x windows/h" + (f", latency <= {max_lat}x" if max_lat else "")
    per = ", ".join(f"ctx {c} {x['throughput_x']:.2f}x/{x['latency_x']:.2f}x"
                    for c, x in table[4]["contexts"].items())
    print(f"  TARGET {label} batch 4 {goal}: {'MET' if ok else 'NOT MET'} (30 s window {row['throughput_x']:.2f}x "
          f"windows/h, latency {row['latency_x']:.2f}x; per context thr/lat {per})")
    return [f"{label} batch 4 {row['throughput_x']:.2f}x windows/h (latency {row['latency_x']:.2f}x) "
            f"{'met' if ok else 'NOT met'}"]


# ----------------------------------------------------------------------------------------------
# batch independence


def independence(loop: DecodeLoop, states, mask, n: int, steps: int = 3, ctx: int = 16) -> dict:
    """n windows (distinct prompts and seeds) stepped alone, then together: logits and tokens compared."""
    def run(together: bool):
        with torch.inference_mode():
            ws = [start(loop, states, mask, ctx, steps + 2, i) for i in range(n)]
            logits = [[] for _ in ws]
            groups = [list(range(n))] if together else [[i] for i in range(n)]
            for g in groups:
                for _ in range(steps):
                    loop.step([ws[i] for i in g])
                    for i in g:
                        logits[i].append(ws[i].logits.clone())
            toks = [w.seq[w.prefix:w.t].clone() for w in ws]
            for w in ws:
                w.release()
        return logits, toks

    la, ta = run(False)
    lb, tb = run(True)
    diff = max(float((a - b).abs().max()) for x, y in zip(la, lb) for a, b in zip(x, y))
    first = max(float((x[0] - y[0]).abs().max()) for x, y in zip(la, lb))
    cos = min(float(F.cosine_similarity(x[0], y[0], dim=-1).min()) for x, y in zip(la, lb))
    kl = max(float(compare(x[0][0], y[0][0])["kl"].mean()) for x, y in zip(la, lb))  # conditional row
    same = sum(int((a == b).sum()) for a, b in zip(ta, tb)) / sum(a.numel() for a in ta)
    identical = all(torch.equal(a, b) for x, y in zip(la, lb) for a, b in zip(x, y))
    print(f"  {loop_label(loop)} batch independence ({n} windows, ctx {ctx}, {steps} steps, alone vs together): "
          f"logits {'bitwise identical' if identical else 'DIFFER'}; max |diff| first step {first:.3g}, any step "
          f"{diff:.3g}; min cosine first step {cos:.6f}, KL(alone || together) of the "
          f"conditional row, worst window {kl:.2e}; tokens equal {same:.1%}", flush=True)
    return {"identical": identical, "max_abs_diff_first_step": first, "max_abs_diff": diff,
            "min_cosine_first_step": cos, "kl_first_step": kl, "tokens_equal": same}


# ----------------------------------------------------------------------------------------------
# int8 fidelity


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """(n, V) fp32 vs int8 logits -> per row cosine, KL(fp32 || int8), top-1 agreement, fp32 entropy."""
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    pa = la.exp()
    return {"cos": F.cosine_similarity(a, b, dim=-1), "kl": (pa * (la - lb)).sum(-1),
            "top1": (a.argmax(-1) == b.argmax(-1)).float(), "entropy": -(pa * la).sum(-1),
            "std": a.std(-1)}


def fidelity(fp: DecodeLoop, i8: DecodeLoop, states, mask, ctx: int, steps: int) -> dict:
    """Teacher-forced fp32 vs int8 at one context; metrics over the (step, codebook) pairs to be predicted."""
    prompt = random_codes(4, ctx, seed=7) if ctx else None
    n = ctx + steps + fp.channel_codebooks + 2
    gen = torch.Generator().manual_seed(5)
    acc: dict[str, dict[str, list]] = {"cond": {}, "cfg": {}}
    with torch.inference_mode():
        wf = fp.start(states, mask, prompt, n, SAMPLING, seed=0)
        wi = i8.start(states, mask, prompt, n, SAMPLING, seed=0)
        try:
            for _ in range(steps):
                forced = wf.table[wf.t]
                free = forced < 0
                pairs = {"cond": (wf.logits[0], wi.logits[0]),
                         "cfg": (guided(wf.logits, SAMPLING.cfg), guided(wi.logits, SAMPLING.cfg))}
                for kind, (a, b) in pairs.items():
                    for key, v in compare(a[free], b[free]).items():
                        acc[kind].setdefault(key, []).append(v)
                noise = torch.empty((fp.num_codebooks, SAMPLING.top_k)).exponential_(generator=gen).clamp_(min=1e-20)
                tok = torch.where(free, pick(pairs["cfg"][0], SAMPLING, noise), forced)
                fp.forward([wf], [tok])
                i8.forward([wi], [tok])
                wf.t += 1
                wi.t += 1
        finally:
            wf.release()
            wi.release()
    out = {}
    for kind, d in acc.items():
        v = {k: torch.cat(x) for k, x in d.items()}
        out[kind] = {"cos_mean": float(v["cos"].mean()), "cos_min": float(v["cos"].min()),
                     "kl_mean": float(v["kl"].mean()), "kl_max": float(v["kl"].max()),
                     "top1": float(v["top1"].mean()), "entropy_fp32": float(v["entropy"].mean()),
                     "logit_std_fp32": float(v["std"].mean()), "n": int(v["cos"].numel())}
    return out


def fidelity_table(name: str, fp: DecodeLoop, i8: DecodeLoop, states, mask, contexts, steps: int) -> dict:
    print(f"\nint8 fidelity, {name}: teacher-forced {steps} steps per context (free codebooks only); "
          f"cosine mean/min, KL(fp32||int8) mean/max nats, top-1 agreement; fp32 entropy (log 2048 = 7.62) "
          f"and logit std", flush=True)
    res = {}
    for c in contexts:
        t0 = time.perf_counter()
        r = fidelity(fp, i8, states, mask, c, steps)
        res[c] = r
        for kind in ("cond", "cfg"):
            x = r[kind]
            print(f"  ctx {c:>4} {kind:<4}: cos {x['cos_mean']:.5f} / {x['cos_min']:.5f}  KL {x['kl_mean']:.2e} / "
                  f"{x['kl_max']:.2e}  top-1 {x['top1']:.1%} (n {x['n']})  entropy {x['entropy_fp32']:.2f}  "
                  f"std {x['logit_std_fp32']:.2f}", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s, load {load():.2f})", flush=True)
    return res


def scale_heads(model, std: float) -> None:
    """Re-draw the codebook heads (peaked distributions, as a trained model's, not the init's near-uniform)."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for head in model.decoder.lm_heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 layers, contexts 0/750, batches 1/4 (< 3 min)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8)")
    ap.add_argument("--contexts", default=None, help="comma-separated contexts in frames (default 0,750,1500)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per batch and context (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 24; --quick 4)")
    ap.add_argument("--fid-steps", type=int, default=None, help="teacher-forced steps per context (default 32)")
    ap.add_argument("--head-std", type=float, default=0.1,
                    help="also measure fidelity with the heads re-drawn at this std (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    batches = [int(b) for b in (args.batches or ("1,4" if q else "1,2,4,8")).split(",")]
    contexts = [int(c) for c in (args.contexts or ("0,750" if q else "0,750,1500")).split(",")]
    steps = args.steps or (6 if q else 40)
    warm = min(args.warmup, 2) if q else args.warmup
    layers = args.layers or (4 if q else None)
    fid_steps = args.fid_steps or (8 if q else 32)
    t_all = time.perf_counter()
    print(f"musicgen_batch: torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{load():.2f}; CFG {SAMPLING.cfg}, top-k {SAMPLING.top_k}; batches {batches}, contexts {contexts}, "
          f"{steps} timed steps (+{warm} warm-up) each", flush=True)
    model = build_model("small", CPU, layers=layers)
    print(f"musicgen-small architecture{f', {layers} layers' if layers else ''}: decoder "
          f"{decoder_params(model) / 1e6:.0f} M params", flush=True)
    states, mask = engine_states(model, CPU, torch.float32)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "layers": layers or 24,
               "batches": batches, "contexts": contexts, "steps": steps, "warmup": warm,
               "load_start": load(), "batching": {}, "independence": {}, "fidelity": {}}
    summary = []
    loops = {"fp32": DecodeLoop(model), "int8": DecodeLoop(model, quantize="int8")}
    tables = {}
    for label, loop in loops.items():
        t0 = time.perf_counter()
        print(f"\n[{label}] row tile {loop.row_tile}", flush=True)
        res = time_batches(loop, states, mask, contexts, batches, steps, warm)
        tables[label] = batch_table(f"engine {label}", res, contexts, batches)
        results["batching"][label] = {"raw": {k: {str(kk): v for kk, v in d.items()} for k, d in res.items()},
                                      "table": tables[label], "seconds": time.perf_counter() - t0}
        results["independence"][label] = independence(loop, states, mask, max(batches))
    print("\nwindows/h at context c = B * 3600 / (ms_step(B, c) * 1503 / 1000); 30 s window = B prefills + "
          "1503 steps integrated over the contexts; thr x / lat x = windows/h and per-window latency vs batch 1")
    for label in loops:
        summary += targets(label, tables[label], contexts)
    del loops["int8"]
    gc.collect()

    fid = {}
    i8 = DecodeLoop(copy.deepcopy(model), quantize="int8")
    fid["as built"] = fidelity_table("heads as built (std 0.02)", loops["fp32"], i8, states, mask, contexts,
                                     fid_steps)
    del loops, i8, model
    gc.collect()
    if args.head_std:
        model = build_model("small", CPU, layers=layers)
        scale_heads(model, args.head_std)
        i8 = DecodeLoop(copy.deepcopy(model), quantize="int8")
        fid[f"heads std {args.head_std}"] = fidelity_table(f"heads re-drawn at std {args.head_std}", DecodeLoop(model),
                                                          i8, states, mask, contexts, fid_steps)
        del model, i8
    results["fidelity"] = fid
    for name, r in fid.items():
        kl = max(r[c]["cfg"]["kl_mean"] for c in contexts)
        top = min(r[c]["cfg"]["top1"] for c in contexts)
        summary.append(f"int8 CFG KL <= {kl:.2e} top-1 >= {top:.0%} ({name})")
    results["load_end"] = load()
    results["seconds"] = time.perf_counter() - t_all
    print(f"\ntotal {results['seconds'] / 60:.1f} min, load average {load():.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print("RESULT musicgen-small arch" + (f" ({layers} layers)" if layers else "") + ": " + " | ".join(summary),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
