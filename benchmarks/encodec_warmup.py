"""How much warm-up does decoding a slice of EnCodec tokens need to match one whole decode? (issue 12)

Not a test. EnCodec models with RANDOM weights (no download here): the exact facebook/musicgen-small
EnCodec architecture (32 kHz, hop 640, 4 codebooks of 2048, 2-layer LSTM, non-causal convs with
reflect padding) at three seeds, with its codebooks drawn at three scales (EncodecModel initialises
them to zeros, where every token decodes alike) and with its LSTM weights scaled up 2x and 3x (a longer
memory than default init gives); and the tiny checkpoint of tests/tiny_musicgen.py for contrast.
--checkpoint DIR adds a real MusicGen checkpoint's EnCodec (trained weights; random tokens).

For a random token sequence (60 s; --quick: 10 s) decoded whole once, it reports, worst over several
cut points, the error of codec.decode_span against the whole decode, as error energy relative to the
whole decode's energy in dB: over the 0.5 s right after the warm-up ("0.5s") and the worst 20 ms
frame of it ("20ms"):

- vs the left warm-up W (frames of tokens decoded before the kept audio and thrown away),
- vs the right margin R: the error of the 20 ms frame R frames before a slice's last token, and of
  the 0.5 s ending there,

then the smallest W and R within -60 dB, and the one-thread decode time of a 30 s window whole (1500
frames) vs its 900 new frames plus WARMUP_FRAMES + RIGHT_MARGIN_FRAMES (codec.py's constants).

    python benchmarks/encodec_warmup.py --quick   # < 1 min
    python benchmarks/encodec_warmup.py           # full, a few minutes on one core
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from longsong.engines.musicgen.codec import RIGHT_MARGIN_FRAMES, WARMUP_FRAMES, decode_span  # noqa: E402
from tiny_musicgen import build_tiny_checkpoint, small_encodec_config  # noqa: E402

HOP = 640
LIMIT_DB = -60.0
WARMUPS = [0, 1, 2, 4, 8, 16, 32, 50, 100]
MARGINS = [0, 1, 2, 3, 4, 5, 6, 8, 16]
SPAN = 25  # frames compared: 0.5 s
TAIL = 16  # tokens after the compared span in the warm-up test: beyond the right margin (its table checks it)
FAR = 200  # warm-up in front of the right-margin test: beyond the left effect (the W table checks it)


def musicgen_small_codec(seed: int, codebook_std: float = 1.0, lstm_scale: float = 1.0):
    """EncodecModel with the facebook/musicgen-small EnCodec config and random weights."""
    from transformers import EncodecModel

    cfg = small_encodec_config()
    torch.manual_seed(seed)
    model = EncodecModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for layer in model.quantizer.layers:
            layer.codebook.embed.normal_(0.0, codebook_std)
        for name, p in model.decoder.layers[1].lstm.named_parameters():
            if name.startswith("weight"):
                p.mul_(lstm_scale)
    return model


def tiny_codec():
    from transformers import MusicgenForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        model = MusicgenForConditionalGeneration.from_pretrained(build_tiny_checkpoint(Path(tmp) / "tiny"))
    return model.audio_encoder.eval().requires_grad_(False)


def checkpoint_codec(path: str):
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(path).audio_encoder.eval().requires_grad_(False)
    model.config.chunk_length_s = None
    return model


def err_db(audio: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(whole span, worst 20 ms frame) error energy relative to the reference's, in dB."""
    e, r = (audio - ref).reshape(-1, HOP), ref.reshape(-1, HOP)
    tiny = np.finfo(np.float64).tiny
    span = 10 * np.log10(max(float(np.sum(e.astype(np.float64) ** 2)), tiny) / float(np.sum(r.astype(np.float64) ** 2)))
    frames = np.sum(e.astype(np.float64) ** 2, axis=1) / np.sum(r.astype(np.float64) ** 2, axis=1)
    return span, float(10 * np.log10(max(frames.max(), tiny)))


def left_error(codec, codes, ref, cuts, warmup) -> tuple[float, float]:
    """Worst error over `cuts` of the 0.5 s after a cut, decoded from `warmup` frames before it."""
    worst = (-np.inf, -np.inf)
    for s in cuts:
        audio = decode_span(codec, codes[:, :s + SPAN + TAIL], s, warmup)[0, :SPAN * HOP]
        worst = tuple(map(max, worst, err_db(audio, ref[s * HOP:(s + SPAN) * HOP])))
    return worst


def right_errors(codec, codes, ref, cuts) -> dict[int, tuple[float, float]]:
    """Per margin R, worst error over slices ending at `cuts` of the 20 ms frame R frames before the slice's
    last token (and of the 0.5 s ending there)."""
    keep = 2 * SPAN
    out = {r: (-np.inf, -np.inf) for r in range(keep - SPAN)}
    for e in cuts:
        audio = decode_span(codec, codes[:, :e], e - keep, FAR)[0]
        want = ref[(e - keep) * HOP:e * HOP]
        for r in out:
            end, begin = (keep - r) * HOP, (keep - r - SPAN) * HOP
            span = err_db(audio[begin:end], want[begin:end])[0]
            frame = err_db(audio[end - HOP:end], want[end - HOP:end])[0]
            out[r] = (max(out[r][0], span), max(out[r][1], frame))
    return out


def first_within(values: dict[int, tuple[float, float]]) -> int | None:
    """The smallest key from which on every value is within LIMIT_DB (both measures)."""
    good = None
    for k in sorted(values, reverse=True):
        if max(values[k]) > LIMIT_DB:
            break
        good = k
    return good


def needed_warmup(codec, codes, ref, cuts, table) -> int | None:
    """Exact smallest W within LIMIT_DB: scan the integers below the first table entry that is."""
    grid = first_within(table)
    if grid is None:
        return None
    below = max([w for w in WARMUPS if w < grid], default=grid)
    for w in range(below + 1, grid):
        if max(left_error(codec, codes, ref, cuts, w)) <= LIMIT_DB:
            return w
    return grid


def time_decode(codec, lengths: list[int], repeats: int) -> list[float]:
    """One-thread seconds to decode random codes of each length: the best of `repeats`, lengths interleaved
    (the machine's other load hits both alike)."""
    codes = torch.randint(0, codec.config.codebook_size, (codec.config.num_quantizers, max(lengths)))
    decode_span(codec, codes[:, :50], 0, 0)  # warm
    best = [np.inf] * len(lengths)
    for _ in range(repeats):
        for i, n in enumerate(lengths):
            t = time.perf_counter()
            decode_span(codec, codes[:, :n], 0, 0)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def fmt(pair) -> str:
    return "exact" if max(pair) < -300 else f"{pair[0]:7.1f}/{pair[1]:6.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s sequence, two models, < 1 min")
    ap.add_argument("--checkpoint", help="also a MusicGen checkpoint directory's EnCodec (trained weights)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging

    logging.disable_progress_bar()

    models = [("small seed0", lambda: musicgen_small_codec(0)), ("tiny ckpt", tiny_codec)]
    if not args.quick:
        models[1:1] = [("small seed1", lambda: musicgen_small_codec(1)),
                       ("small seed2", lambda: musicgen_small_codec(2)),
                       ("small cb*0.1", lambda: musicgen_small_codec(0, codebook_std=0.1)),
                       ("small cb*10", lambda: musicgen_small_codec(0, codebook_std=10.0)),
                       ("small lstm*2", lambda: musicgen_small_codec(0, lstm_scale=2.0)),
                       ("small lstm*3", lambda: musicgen_small_codec(0, lstm_scale=3.0))]
    if args.checkpoint:
        models.append(("checkpoint", lambda: checkpoint_codec(args.checkpoint)))
    n = 500 if args.quick else 3000
    cuts = [n // 2] if args.quick else [n // 4, n // 2 + 7, 3 * n // 4 + 13]
    gen = torch.Generator().manual_seed(1234)

    print(f"error dB (0.5s / worst 20ms frame) vs whole decode of {n / 50:g} s random tokens, worst of cuts {cuts}; "
          f"RANDOM weights unless 'ckpt'/'checkpoint'")
    rows_w, rows_r, needs = [], [], []
    for name, build in models:
        t = time.perf_counter()
        codec = build()
        codes = torch.randint(0, codec.config.codebook_size, (codec.config.num_quantizers, n), generator=gen)
        ref = decode_span(codec, codes, 0, 0)[0]
        table = {w: left_error(codec, codes, ref, cuts, w) for w in WARMUPS}
        right = right_errors(codec, codes, ref, cuts)
        needs.append((name, needed_warmup(codec, codes, ref, cuts, table), first_within(right),
                      time.perf_counter() - t))
        rows_w.append((name, table))
        rows_r.append((name, right))

    print("\nleft warm-up W (frames):")
    print(f"{'model':14s}" + "".join(f"{'W=' + str(w):>15s}" for w in WARMUPS))
    for name, table in rows_w:
        print(f"{name:14s}" + "".join(f"{fmt(table[w]):>15s}" for w in WARMUPS))
    print("\nright margin R (frames before the slice's last token):")
    print(f"{'model':14s}" + "".join(f"{'R=' + str(r):>15s}" for r in MARGINS))
    for name, right in rows_r:
        print(f"{name:14s}" + "".join(f"{fmt(right[r]):>15s}" for r in MARGINS))
    print(f"\nsmallest within {LIMIT_DB:g} dB:")
    for name, w, r, secs in needs:
        print(f"{name:14s} W={w}  R={r}   ({secs:.0f} s)")

    codec = musicgen_small_codec(0)
    repeats = 1 if args.quick else 3
    span = 900 + WARMUP_FRAMES + RIGHT_MARGIN_FRAMES
    whole, part = time_decode(codec, [1500, span], repeats)
    print(f"\none-thread decode, musicgen-small EnCodec: 1500 frames {whole:.2f} s, {span} frames "
          f"(900 new + W={WARMUP_FRAMES} + R={RIGHT_MARGIN_FRAMES}) {part:.2f} s: saves {1 - part / whole:.0%}")


if __name__ == "__main__":
    main()
