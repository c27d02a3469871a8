"""The decode loop's static-shape step (issue 3): what a CUDA graph captures.

Fixed shapes over one window's buffers, the position a device tensor, attention over the whole cache
with a mask hiding positions after it; `_capture` records one step in a CUDA graph that is then replayed
for every token. A mix-in of DecodeLoop (loop.py), which holds the weights and the eager batched step.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from longsong.engines.base import StepCallback
from longsong.engines.musicgen.sampling import SamplingConfig, guided, pick


class StaticSteps:
    """Single-window static step and CUDA-graph generation (methods of DecodeLoop)."""

    def _generate_static(self, text_states, text_mask, prompt, n_frames: int, sampling: SamplingConfig, seed: int,
                         on_step: StepCallback | None, tick, graph_mode: bool):
        w = self.new_window(text_states, text_mask, prompt, n_frames, sampling, seed, static=True)
        total = w.length - w.prefix
        graph = None
        mode = "cuda-graph" if graph_mode else "static"
        try:
            s, length = w.prefix, w.length
            if graph_mode:
                graph = self._capture(w, sampling)
                if graph is None:
                    mode = "static"
            self._prefill(w, tick)
            w.pos.fill_(s)
            for t in range(s, length):
                if t < length - 1:
                    if graph is not None:
                        graph.replay()
                    else:
                        self._step_static(w, sampling)
                else:
                    self._sample_static(w, sampling)
                if on_step is not None:
                    on_step(t - s + 1, total)
            return self.result(w, w.prefix - 1, mode)  # prefix = BOS + the prompt frames
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # queued replays finish before their buffers go
            if graph is not None:
                graph.reset()
                del graph
            w.release()
            del w
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _forward_static(self, w, tok: torch.Tensor) -> None:
        """Same as DecodeLoop.forward for one window, with the position in w.pos (device tensor) and fixed shapes: what the
        CUDA graph captures. Attends over the whole cache with a mask hiding positions > pos."""
        b = w.batch
        pos = w.pos.view(1)
        x = self._embed(tok.view(1, self.num_codebooks, 1).expand(b, -1, -1))
        x = x + self.positions.index_select(0, pos).to(self.dtype)
        bias = torch.zeros((1, 1, 1, w.length), device=self.device, dtype=self.dtype)
        bias.masked_fill_((w.arange > pos).view(1, 1, 1, -1), float("-inf"))
        for i, lay in enumerate(self.layers):
            h = F.layer_norm(x, (self.hidden,), *lay.ln1)
            qkv = lay.qkv(h).view(b, 1, 3, self.heads, self.head_dim)
            q = qkv[:, :, 0].transpose(1, 2)
            kc, vc = w.k_cache[i], w.v_cache[i]
            kc.index_copy_(2, pos, qkv[:, :, 1].transpose(1, 2))
            vc.index_copy_(2, pos, qkv[:, :, 2].transpose(1, 2))
            a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=bias, scale=self.scaling)
            x = x + lay.o(a.transpose(1, 2).reshape(b, 1, self.hidden))
            x = self._ffn_and_cross(lay, x, w, i)
        x = F.layer_norm(x, (self.hidden,), *self.final_ln)
        w.logits.copy_(self._heads(x))

    def _sample_static(self, w, sp: SamplingConfig) -> torch.Tensor:
        """Sample the token at w.pos (device tensor) and write it into the sequence."""
        pos = w.pos.view(1)
        noise = None if w.noise is None else w.noise.index_select(0, pos)[0]
        tok = pick(guided(w.logits, sp.cfg), sp, noise)
        forced = w.table.index_select(0, pos)[0]
        tok = torch.where(forced < 0, tok, forced)
        w.seq.index_copy_(0, pos, tok.unsqueeze(0))
        return tok

    def _step_static(self, w, sp: SamplingConfig) -> None:
        """Sample the token at w.pos, write it, feed it, advance w.pos: one CUDA-graph replay."""
        self._forward_static(w, self._sample_static(w, sp))
        w.pos.add_(1)

    def _capture(self, w, sp: SamplingConfig):
        """Capture one step over the window's static buffers (before the prefill, whose state the warm-up
        would otherwise clobber). Returns None (static eager fallback) when capture is impossible."""
        try:
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step_static(w, sp)
                    w.pos.fill_(w.prefix)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step_static(w, sp)
            w.pos.fill_(w.prefix)
            w.seq.copy_(w.table)
            return graph
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any capture problem: run the same step uncaptured
            warnings.warn(f"CUDA graph capture failed ({exc!r}); running the static step without a graph")
            torch.cuda.synchronize(self.device)
            w.pos.fill_(w.prefix)
            w.seq.copy_(w.table)
            return None
