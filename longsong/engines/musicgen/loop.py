"""The MusicGen engine's own decode loop (issue 3).

transformers' `generate` always grows a dynamic KV cache for MusicGen, runs its logits processors in
Python every step and cannot be compiled. This loop drives the same weights (the modules of a loaded
`MusicgenForConditionalGeneration`) with:

- one prefill pass over every known position (BOS + the hand-off codes, delay pattern applied),
  the text cross-attention keys/values computed once per window;
- a KV cache preallocated for the whole window and for both classifier-free-guidance halves
  (batch 2: row 0 conditional, row 1 unconditional, as transformers orders them);
- MusicGen's delay pattern applied on-device from a precomputed table (delay.py);
- CFG, temperature, top-k, top-p and the draw on-device from noise made once per window (sampling.py),
  so there are no per-step host syncs or Python-side tensors;
- on CUDA the whole step (sample, write, embed, 24-48 layers, heads) is captured once per window in
  a CUDA graph over static buffers ("static" mode: fixed shapes, positions as device tensors,
  attention over the whole cache with a position mask) and replayed; on CPU the step runs eagerly
  and attends over the filled part of the cache only ("eager" mode);
- fused linear layers, optionally int8 dynamically quantized on CPU (linears.py).

A window of n frames has L = n + C positions (C = codebooks per channel, see delay.py): after a
prefill of the s = m + 1 known positions (m hand-off frames) it samples L - s tokens, one decoding
step each (on_step counts these).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from longsong.engines.base import StepCallback
from longsong.engines.musicgen.delay import build_delay_table, codes_from_sequence
from longsong.engines.musicgen.linears import prepare_linear
from longsong.engines.musicgen.sampling import SamplingConfig, guided, pick, window_noise


@dataclass
class _Layer:
    ln1: tuple  # (weight, bias, eps)
    qkv: Callable  # x -> (q | k | v) concatenated on the last dim
    o: Callable
    ln2: tuple
    cq: Callable
    ck: Callable
    cv: Callable
    co: Callable
    ln3: tuple
    fc1: Callable
    fc2: Callable


def _ln(mod: torch.nn.LayerNorm) -> tuple:
    return (mod.weight, mod.bias, mod.eps)


# ----------------------------------------------------------------------------------------------
# Per-window state


@dataclass
class _Window:
    batch: int
    length: int  # L (cache length)
    prefix: int  # s
    table: torch.Tensor  # (L, K) delay table, -1 = free
    seq: torch.Tensor  # (L, K) tokens
    noise: torch.Tensor | None  # (L, K, N) exponential noise (rows >= s used)
    cross_k: list[torch.Tensor]  # per layer (B, H, S, hd)
    cross_v: list[torch.Tensor]
    cross_mask: torch.Tensor | None  # (B, 1, 1, S) additive (or bool)
    k_cache: list[torch.Tensor]  # per layer (B, H, L, hd)
    v_cache: list[torch.Tensor]
    logits: torch.Tensor  # (B, K, V) float32, logits predicting the next position
    pos: torch.Tensor | None = None  # static mode: () int64 device tensor, position of the next token
    arange: torch.Tensor | None = None  # static mode: (L,) positions

    def release(self) -> None:
        for name in ("table", "seq", "noise", "cross_k", "cross_v", "cross_mask", "k_cache", "v_cache", "logits",
                     "pos", "arange"):
            setattr(self, name, None)


@dataclass
class LoopResult:
    codes: torch.Tensor  # (K, n_frames) int64 on CPU
    prompt: torch.Tensor | None  # (K, m) the codes the window was conditioned on, as fed to the decoder
    steps: int  # forward steps after the prefill (= tokens sampled)
    prefill_positions: int
    mode: str  # "eager", "static", "cuda-graph"


class DecodeLoop:
    """Static-cache decode loop over the decoder of a loaded MusicgenForConditionalGeneration."""

    def __init__(self, model, *, quantize: str | None = None, cuda_graph: bool | None = None,
                 transpose_weights: bool | None = None):
        dec = model.decoder  # MusicgenForCausalLM
        core = dec.model.decoder  # MusicgenDecoder
        cfg = dec.config
        self.num_codebooks = int(cfg.num_codebooks)
        self.audio_channels = int(cfg.audio_channels)
        self.channel_codebooks = self.num_codebooks // self.audio_channels
        self.vocab = int(cfg.vocab_size)
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.scaling = self.head_dim ** -0.5
        gen = model.generation_config
        pad = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.pad_token_id
        self.pad_token_id = int(pad if pad is not None else cfg.pad_token_id)
        self.device = next(dec.parameters()).device
        self.dtype = next(dec.parameters()).dtype
        self.quantize = quantize
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize: {quantize!r} (allowed: None, 'int8')")
        if quantize == "int8" and self.device.type != "cpu":
            raise ValueError("quantize='int8' is CPU-only (dynamic quantization)")
        self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph needs a CUDA device")
        self.act = core.layers[0].activation_fn
        self.embed = [e.weight for e in core.embed_tokens]
        self.positions = core.embed_positions.weights
        self.final_ln = _ln(core.layer_norm)

        transpose = self.device.type == "cpu" if transpose_weights is None else transpose_weights

        def lin(*mods, quantized=True):
            return prepare_linear(list(mods), transpose=transpose, quantize=quantize if quantized else None)

        self.layers: list[_Layer] = []
        for layer in core.layers:
            sa, ca = layer.self_attn, layer.encoder_attn
            self.layers.append(_Layer(
                ln1=_ln(layer.self_attn_layer_norm), qkv=lin(sa.q_proj, sa.k_proj, sa.v_proj), o=lin(sa.out_proj),
                ln2=_ln(layer.encoder_attn_layer_norm), cq=lin(ca.q_proj),
                # cross keys/values run once per window: kept in full precision
                ck=lin(ca.k_proj, quantized=False), cv=lin(ca.v_proj, quantized=False),
                co=lin(ca.out_proj), ln3=_ln(layer.final_layer_norm), fc1=lin(layer.fc1), fc2=lin(layer.fc2),
            ))
        self._cross_bias = any(lay.encoder_attn.k_proj.bias is not None or lay.encoder_attn.v_proj.bias is not None
                               for lay in core.layers)
        self.head_fn = lin(*dec.lm_heads)  # the codebook heads side by side: (.., K * V)

    # ------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "cuda-graph" if self.cuda_graph else "eager"

    def max_positions(self) -> int:
        return int(self.positions.shape[0])

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, K, T) -> (B, T, D): sum over codebooks, in codebook order (as transformers)."""
        x = F.embedding(tokens[:, 0], self.embed[0])
        for k in range(1, self.num_codebooks):
            x = x + F.embedding(tokens[:, k], self.embed[k])
        return x

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D) -> (B, K, V) float32."""
        b = x.shape[0]
        return self.head_fn(x[:, -1]).view(b, self.num_codebooks, self.vocab).float()

    def _ffn_and_cross(self, lay: _Layer, x: torch.Tensor, w: _Window, i: int) -> torch.Tensor:
        b, t, _ = x.shape
        h = F.layer_norm(x, (self.hidden,), *lay.ln2)
        q = lay.cq(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, w.cross_k[i], w.cross_v[i], attn_mask=w.cross_mask,
                                           scale=self.scaling)
        x = x + lay.co(a.transpose(1, 2).reshape(b, t, self.hidden))
        h = F.layer_norm(x, (self.hidden,), *lay.ln3)
        return x + lay.fc2(self.act(lay.fc1(h)))

    # ------------------------------------------------------------------------------------------
    def _prefill(self, w: _Window, tick: Callable[[], None] | None = None) -> None:
        """Positions 0..s-1 in one pass; fills the caches and the logits of position s. `tick` runs after
        every layer (a long CPU prefill keeps heart-beating and can be cancelled)."""
        s = w.prefix
        tokens = w.table[:s].t().unsqueeze(0).expand(w.batch, -1, -1)  # (B, K, s)
        x = self._embed(tokens) + self.positions[:s].to(self.dtype)
        b = w.batch
        for i, lay in enumerate(self.layers):
            h = F.layer_norm(x, (self.hidden,), *lay.ln1)
            qkv = lay.qkv(h).view(b, s, 3, self.heads, self.head_dim)
            q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
            w.k_cache[i][:, :, :s].copy_(k)
            w.v_cache[i][:, :, :s].copy_(v)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1, scale=self.scaling)
            x = x + lay.o(a.transpose(1, 2).reshape(b, s, self.hidden))
            x = self._ffn_and_cross(lay, x, w, i)
            if tick is not None:
                tick()
        x = F.layer_norm(x[:, -1:], (self.hidden,), *self.final_ln)
        w.logits.copy_(self._heads(x))

    def _forward_eager(self, w: _Window, tok: torch.Tensor, t: int) -> None:
        """Feed the token at position t (python int); logits of t+1 into w.logits."""
        b = w.batch
        x = self._embed(tok.view(1, self.num_codebooks, 1).expand(b, -1, -1)) + self.positions[t:t + 1].to(self.dtype)
        for i, lay in enumerate(self.layers):
            h = F.layer_norm(x, (self.hidden,), *lay.ln1)
            qkv = lay.qkv(h).view(b, 1, 3, self.heads, self.head_dim)
            q = qkv[:, :, 0].transpose(1, 2)
            kc, vc = w.k_cache[i], w.v_cache[i]
            kc[:, :, t].copy_(qkv[:, 0, 1])
            vc[:, :, t].copy_(qkv[:, 0, 2])
            a = F.scaled_dot_product_attention(q, kc[:, :, :t + 1], vc[:, :, :t + 1], scale=self.scaling)
            x = x + lay.o(a.transpose(1, 2).reshape(b, 1, self.hidden))
            x = self._ffn_and_cross(lay, x, w, i)
        x = F.layer_norm(x, (self.hidden,), *self.final_ln)
        w.logits.copy_(self._heads(x))

    def _forward_static(self, w: _Window, tok: torch.Tensor) -> None:
        """Same as _forward_eager with the position in w.pos (device tensor) and fixed shapes: what the
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

    # ------------------------------------------------------------------------------------------
    def _sample_eager(self, w: _Window, sp: SamplingConfig, t: int) -> torch.Tensor:
        tok = pick(guided(w.logits, sp.cfg), sp, None if w.noise is None else w.noise[t])
        forced = w.table[t]
        tok = torch.where(forced < 0, tok, forced)
        w.seq[t].copy_(tok)
        return tok

    def _sample_static(self, w: _Window, sp: SamplingConfig) -> torch.Tensor:
        """Sample the token at w.pos (device tensor) and write it into the sequence."""
        pos = w.pos.view(1)
        noise = None if w.noise is None else w.noise.index_select(0, pos)[0]
        tok = pick(guided(w.logits, sp.cfg), sp, noise)
        forced = w.table.index_select(0, pos)[0]
        tok = torch.where(forced < 0, tok, forced)
        w.seq.index_copy_(0, pos, tok.unsqueeze(0))
        return tok

    def _step_static(self, w: _Window, sp: SamplingConfig) -> None:
        """Sample the token at w.pos, write it, feed it, advance w.pos: one CUDA-graph replay."""
        self._forward_static(w, self._sample_static(w, sp))
        w.pos.add_(1)

    # ------------------------------------------------------------------------------------------
    def cross_states(self, text_states: torch.Tensor, text_mask: torch.Tensor, batch: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, S, D) conditional text states (projected to the decoder width) and (1, S) mask ->
        (B, S, D) states with the null condition (zeros, mask 0) appended for CFG, masked as in transformers."""
        states = text_states.to(self.device, self.dtype)
        mask = text_mask.to(self.device)
        if batch == 2:
            states = torch.cat([states, torch.zeros_like(states)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        states = states * mask[..., None].to(states.dtype)
        return states, mask

    def new_window(self, text_states: torch.Tensor, text_mask: torch.Tensor, prompt: torch.Tensor | None,
                   n_frames: int, sp: SamplingConfig, seed: int, static: bool) -> _Window:
        dev, dt = self.device, self.dtype
        table, s = build_delay_table(prompt, n_frames, self.num_codebooks, self.audio_channels, self.pad_token_id)
        length = table.shape[0]
        if length > self.max_positions():
            raise ValueError(f"window of {n_frames} frames needs {length} positions; the model has "
                             f"{self.max_positions()}")
        b = sp.batch
        states, mask = self.cross_states(text_states, text_mask, b)
        n_txt = states.shape[1]
        cross_k, cross_v = [], []
        for lay in self.layers:
            cross_k.append(lay.ck(states).view(b, n_txt, self.heads, self.head_dim).transpose(1, 2).contiguous())
            cross_v.append(lay.cv(states).view(b, n_txt, self.heads, self.head_dim).transpose(1, 2).contiguous())
        keep = mask.bool().view(b, 1, 1, n_txt)
        if bool(keep.all()):
            cross_mask = None
        else:  # additive, built once (a boolean mask is converted on every call); the fully masked null
            # condition then attends uniformly to all-zero values (bias-free projections): 0, as with a bool mask
            cross_mask = torch.zeros(keep.shape, device=dev, dtype=dt).masked_fill_(~keep, torch.finfo(dt).min)
            if self._cross_bias:
                cross_mask = keep
        noise = window_noise(sp, seed, length, self.num_codebooks, self.vocab, dev)
        shape = (b, self.heads, length, self.head_dim)
        alloc = torch.zeros if static else torch.empty  # static mode reads masked (finite) positions
        k_cache = [alloc(shape, device=dev, dtype=dt) for _ in self.layers]
        v_cache = [alloc(shape, device=dev, dtype=dt) for _ in self.layers]
        table = table.to(dev)
        w = _Window(batch=b, length=length, prefix=s, table=table, seq=table.clone(), noise=noise,
                    cross_k=cross_k, cross_v=cross_v, cross_mask=cross_mask, k_cache=k_cache, v_cache=v_cache,
                    logits=torch.zeros((b, self.num_codebooks, self.vocab), device=dev, dtype=torch.float32))
        if static:
            w.pos = torch.full((), s, device=dev, dtype=torch.long)
            w.arange = torch.arange(length, device=dev)
        return w

    @torch.inference_mode()
    def generate(self, text_states: torch.Tensor, text_mask: torch.Tensor, prompt: torch.Tensor | None,
                 n_frames: int, sampling: SamplingConfig, seed: int, on_step: StepCallback | None = None,
                 static: bool | None = None) -> LoopResult:
        """Codes (K, n_frames) of one window; the first m = prompt.shape[-1] frames are the prompt.

        text_states: (1, S, D) conditional text-encoder states already projected to the decoder width;
        text_mask: (1, S); prompt: (K, m) codes or None; on_step(done, total) after every step, and
        on_step(0, total) after every prefill layer when there is a prompt (an exception from it stops
        the loop; every per-window buffer is dropped on the way out)."""
        graph_mode = self.cuda_graph if static is None else (static and self.cuda_graph)
        static = graph_mode or bool(static)
        w = self.new_window(text_states, text_mask, prompt, n_frames, sampling, seed, static)
        graph = None
        mode = "cuda-graph" if graph_mode else ("static" if static else "eager")
        try:
            s, length = w.prefix, w.length
            total = length - s
            if graph_mode:
                graph = self._capture(w, sampling)
                if graph is None:
                    mode = "static"
            tick = None
            if on_step is not None and s > 1:
                tick = lambda: on_step(0, total)  # noqa: E731
            self._prefill(w, tick)
            if static:
                w.pos.fill_(s)
            for t in range(s, length):
                if t < length - 1:
                    if graph is not None:
                        graph.replay()
                    elif static:
                        self._step_static(w, sampling)
                    else:
                        tok = self._sample_eager(w, sampling, t)
                        self._forward_eager(w, tok, t)
                else:
                    if static:
                        self._sample_static(w, sampling)
                    else:
                        self._sample_eager(w, sampling, t)
                if on_step is not None:
                    on_step(t - s + 1, total)
            codes = codes_from_sequence(w.seq, n_frames, self.num_codebooks, self.audio_channels).cpu()
            fed = None if prompt is None else self._prompt_fed(w, int(prompt.shape[-1]))
            return LoopResult(codes=codes, prompt=fed, steps=total, prefill_positions=s, mode=mode)
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

    def _prompt_fed(self, w: _Window, m: int) -> torch.Tensor:
        """The hand-off codes the decoder was conditioned on, read back from the window's sequence."""
        return codes_from_sequence(w.seq, m, self.num_codebooks, self.audio_channels).cpu()

    def _capture(self, w: _Window, sp: SamplingConfig):
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

