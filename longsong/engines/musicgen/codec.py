"""EnCodec decoding of a window's new tokens only (issue 12, "Decode less").

A song is one token sequence cut into windows whose first `context_frames` tokens repeat the previous
window's last ones, so decoding every window whole decodes each context twice. `decode_span` decodes a
window from a frame `start` on, with only `warmup` earlier tokens in front, and drops their audio.

Why that matches one decode of the whole sequence: the 32 kHz EnCodec decoder (non-causal convs with
reflect padding, then a unidirectional LSTM) sees only a few frames on each side through its convs,
and the LSTM forgets the state it started from. A slice's audio is off only (a) just after its first
token, until the warm-up has flushed the LSTM and the convs' left padding, and (b) in its last
RIGHT_MARGIN_FRAMES frames, where the convs see reflect padding instead of the following tokens. So a
window keeps its audio up to RIGHT_MARGIN_FRAMES before its last token, and the next window decodes
from there with WARMUP_FRAMES of warm-up.

Figures from benchmarks/encodec_warmup.py (error energy relative to the whole decode's, worst of the
0.5 s after the warm-up and of any 20 ms frame in it; float32 floor about -130 dB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Random weights of the exact musicgen-small EnCodec, 60 s of random tokens: within -60 dB after 6-10
# frames of warm-up (3 seeds; codebooks drawn 0.1x: 4, 10x: 8), at the float floor (-120..-136 dB) by
# 32; with the LSTM's weights scaled 2x (a longer memory) 13 frames, 3x 23 (-98 dB at 50). The tiny test
# checkpoint: 6. The trained weights could not be measured here (no download; the benchmark's
# --checkpoint can): 50 frames (1 s) is twice the worst case measured, for 5 % more decode than none.
WARMUP_FRAMES = 50

# Every model measured reaches the float floor exactly 4 frames before a slice's last token (3 frames
# before: -15..-60 dB): the decoder's first conv (k=7) sees 3 frames to the right, the upsampling stack a
# fraction of one more, and its LSTM is causal. Set by the architecture, not the weights.
RIGHT_MARGIN_FRAMES = 4


def decode_span(audio_encoder, codes: torch.Tensor, start: int, warmup: int = WARMUP_FRAMES,
                channels: int = 1) -> np.ndarray:
    """(K, n) codes -> float32 (channels, (n - start) * hop): the audio of frames [start, n), decoded from
    frame max(0, start - warmup). Exact (within -60 dB) from `start` on only if the codes hold `warmup` tokens
    before it (or start there), and up to RIGHT_MARGIN_FRAMES before n unless n ends the song. Stereo codes
    interleave the channels' codebooks (0::2 left, 1::2 right)."""
    return decode_spans(audio_encoder, [codes], start, warmup, channels)[0]


def decode_spans(audio_encoder, codes: list[torch.Tensor], start: int, warmup: int = WARMUP_FRAMES,
                 channels: int = 1) -> list[np.ndarray]:
    """decode_span of several windows' codes of one shape in one decode call: windows and channels go
    in EnCodec's batch dimension (audio_codes (1 chunk, batch, K, n); chunk_length_s None, as MusicGenEngine
    sets it), one kernel launch chain for all. Rounds differently from one by one (about -135 dB)."""
    shape = tuple(codes[0].shape)
    if any(tuple(c.shape) != shape for c in codes):
        raise ValueError(f"decode_spans: codes of different shapes {[tuple(c.shape) for c in codes]}")
    n = shape[-1]
    if not 0 <= start < n:
        raise ValueError(f"decode_spans: start {start} outside the {n} frames")
    import torch  # deferred, as in engine.py: importing this module costs nothing

    first = max(0, start - warmup)
    hop = int(np.prod(audio_encoder.config.upsampling_ratios))
    device = next(audio_encoder.parameters()).device
    batch = torch.stack([torch.as_tensor(c)[ch::channels, first:] for c in codes for ch in range(channels)])
    with torch.inference_mode():
        audio = audio_encoder.decode(batch[None].to(device), [None]).audio_values[:, 0]
        audio = audio[:, (start - first) * hop:(n - first) * hop].float().cpu().numpy()
    want = (n - start) * hop  # EnCodec's output can fall a few samples short of n * hop: pad, as the track expects
    if audio.shape[1] < want:
        audio = np.pad(audio, ((0, 0), (0, want - audio.shape[1])))
    return [np.ascontiguousarray(audio[i * channels:(i + 1) * channels]) for i in range(len(codes))]
