"""Choosing each step's tokens, on-device, in transformers' order: classifier-free guidance
(`uncond + (cond - uncond) * scale`, its ClassifierFreeGuidanceLogitsProcessor), then temperature,
top-k and top-p, then the draw.

The draw is `argmax(p / E)` with E ~ Exp(1), which samples exactly from p; the noise E of a whole
window is generated once from the request's seed, so a step needs no host sync or fresh tensor
(and can be captured in a CUDA graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longsong.request import Sampling


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = Sampling.temperature
    top_k: int = Sampling.top_k  # 0: off
    top_p: float = Sampling.top_p  # 0 (audiocraft's "off") or >= 1: off
    cfg: float = Sampling.cfg  # guidance scale; 1: no guidance (batch 1)
    greedy: bool = False  # argmax of the guided logits (transformers' do_sample=False)

    @property
    def use_top_p(self) -> bool:
        return 0.0 < self.top_p < 1.0

    @property
    def batch(self) -> int:
        return 2 if self.cfg > 1.0 else 1


def guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, K, V) -> (K, V): transformers' ClassifierFreeGuidanceLogitsProcessor for B == 2 (row 0
    conditional, row 1 unconditional)."""
    if logits.shape[0] == 1:
        return logits[0]
    cond, uncond = logits[0], logits[1]
    return uncond + (cond - uncond) * scale


def pick(scores: torch.Tensor, sp: SamplingConfig, noise: torch.Tensor | None) -> torch.Tensor:
    """(K, V) guided logits -> (K,) tokens: greedy, or temperature -> top-k -> top-p -> draw with
    `noise` (K, N) from window_noise (N: the candidates left by top-k)."""
    if sp.greedy:
        return scores.argmax(dim=-1)
    if sp.temperature != 1.0:
        scores = scores / sp.temperature
    idx = None
    if sp.top_k > 0:
        vals, idx = scores.topk(min(sp.top_k, scores.shape[-1]), dim=-1)  # sorted, largest first
    elif sp.use_top_p:
        vals, idx = scores.sort(dim=-1, descending=True)
    else:
        vals = scores
    if sp.use_top_p:
        probs = vals.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        vals = vals.masked_fill(before >= sp.top_p, float("-inf"))
    choice = (vals.softmax(dim=-1) / noise).argmax(dim=-1)
    if idx is None:
        return choice
    return idx.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


def window_noise(sp: SamplingConfig, seed: int, length: int, num_codebooks: int, vocab: int,
                 device: torch.device) -> torch.Tensor | None:
    """(L, K, N) float32 exponential noise of one window from its seed (None when greedy)."""
    if sp.greedy:
        return None
    n_cand = min(sp.top_k, vocab) if sp.top_k > 0 else vocab
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    noise = torch.empty((length, num_codebooks, n_cand), device=device, dtype=torch.float32)
    noise.exponential_(generator=gen)
    noise.clamp_(min=1e-20)
    return noise
