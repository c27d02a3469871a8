"""MusicGen's delay pattern: where each codebook's tokens sit in the decoder's sequence.

Position 0 is BOS; codebook k's frame j sits at position j + 1 + d(k) with d(k) = k (mono) or
k // 2 (stereo: left/right codebooks interleaved); a window of n frames has L = n + C positions
(C = codebooks per channel). The content is transformers' `build_delay_pattern_mask` /
`apply_delay_pattern_mask` (pad token = BOS = vocab size), kept here as a table so the decode
loop can apply it on-device.
"""

from __future__ import annotations

import torch


def delay_offsets(num_codebooks: int, audio_channels: int) -> list[int]:
    """d(k): the delay of codebook k (stereo: codebooks 2i and 2i+1 share delay i)."""
    return [k // audio_channels for k in range(num_codebooks)]


def build_delay_table(prompt: torch.Tensor | None, n_frames: int, num_codebooks: int, audio_channels: int,
                      pad_token_id: int) -> tuple[torch.Tensor, int]:
    """The delay-pattern table of a window: (L, K) int64, -1 where a token is to be predicted, else the
    forced token (pad/BOS at the pattern's edges, the prompt's codes). Same content as transformers'
    `build_delay_pattern_mask(cat([BOS, prompt]), pad, max_length=L)` pattern mask, transposed.
    Returns (table, s): s = number of leading positions fully known (prefill length)."""
    m = 0 if prompt is None else int(prompt.shape[-1])
    channel_codebooks = num_codebooks // audio_channels
    length = n_frames + channel_codebooks
    table = torch.full((num_codebooks, length), -1, dtype=torch.long)
    for k, d in enumerate(delay_offsets(num_codebooks, audio_channels)):
        table[k, : d + 1] = pad_token_id
        table[k, length - channel_codebooks + 1 + d:] = pad_token_id
        if m:
            table[k, d + 1: d + 1 + m] = prompt[k].to(torch.long)
    return table.t().contiguous(), m + 1


def codes_from_sequence(seq: torch.Tensor, n_frames: int, num_codebooks: int, audio_channels: int) -> torch.Tensor:
    """Undo the delay pattern: (L, K) sequence -> (K, n_frames) codes."""
    out = torch.empty((num_codebooks, n_frames), dtype=torch.long, device=seq.device)
    for k, d in enumerate(delay_offsets(num_codebooks, audio_channels)):
        out[k] = seq[d + 1: d + 1 + n_frames, k]
    return out
