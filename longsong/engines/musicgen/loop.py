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

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from longsong.engines.base import StepCallback
from longsong.engines.musicgen.delay import build_delay_table, codes_from_sequence
from longsong.engines.musicgen.linears import prepare_linear, row_tile
from longsong.engines.musicgen.sampling import SamplingConfig, guided, pick, window_noise
from longsong.engines.musicgen.static import StaticSteps



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
    sampling: SamplingConfig | None = None
    t: int = 0  # eager mode: position of the next token to sample
    pos: torch.Tensor | None = None  # static mode: () int64 device tensor, position of the next token
    arange: torch.Tensor | None = None  # static mode: (L,) positions

    @property
    def done(self) -> bool:
        return self.t >= self.length

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


class DecodeLoop(StaticSteps):
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
        self.ffn = int(cfg.ffn_dim)
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
        self.row_tile = 1
        self.probe_row_tile(16)

    # ------------------------------------------------------------------------------------------
    def probe_row_tile(self, max_rows: int) -> None:
        """Pad a step's rows to the BLAS row tile (linears.row_tile) for up to `max_rows` rows; CPU float only (int8
        quantizes a step's rows together: no tile helps; a GPU is not padded)."""
        if self.device.type != "cpu" or self.quantize is not None:
            return
        first = self.layers[0]
        with torch.inference_mode():
            self.row_tile = row_tile([(first.qkv, self.hidden), (first.o, self.hidden), (first.cq, self.hidden),
                                      (first.co, self.hidden), (first.fc1, self.hidden), (first.fc2, self.ffn),
                                      (self.head_fn, self.hidden)], dtype=self.dtype, max_rows=max_rows)

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

    def forward(self, ws: list[_Window], toks: list[torch.Tensor]) -> None:
        """Feed each window's token (K,) at its position w.t; the logits of w.t + 1 into each w.logits.

        The linear layers run once over the rows of every window (what makes a batch cheap: each weight
        is read once per step); on CPU the rows are padded to a multiple of the BLAS kernel's row tile
        (linears.row_tile, probed at start), from which every row gets the same bits whatever the row
        count and its position, so a window's codes do not depend on its batch-mates. Attention runs per
        window over its own cache and text: the same shapes as alone."""
        sizes = [w.batch for w in ws]
        rows = sum(sizes)
        tok = torch.cat([t.view(1, self.num_codebooks, 1).expand(w.batch, -1, -1) for w, t in zip(ws, toks)])
        pos = torch.cat([self.positions[w.t:w.t + 1].expand(w.batch, -1) for w in ws]).to(self.dtype)
        x = self._embed(tok) + pos.unsqueeze(1)  # (R, 1, D)
        pad = -rows % self.row_tile
        if pad:
            x = torch.cat([x, x.new_zeros((pad, 1, self.hidden))])
        n = x.shape[0]
        spare = x.new_zeros((pad, self.heads, 1, self.head_dim))
        for i, lay in enumerate(self.layers):
            h = F.layer_norm(x, (self.hidden,), *lay.ln1)
            qkv = lay.qkv(h).view(n, 1, 3, self.heads, self.head_dim)
            out = []
            for w, part in zip(ws, qkv[:rows].split(sizes)):
                kc, vc = w.k_cache[i], w.v_cache[i]
                kc[:, :, w.t].copy_(part[:, 0, 1])
                vc[:, :, w.t].copy_(part[:, 0, 2])
                out.append(F.scaled_dot_product_attention(part[:, :, 0].transpose(1, 2), kc[:, :, :w.t + 1],
                                                          vc[:, :, :w.t + 1], scale=self.scaling))
            a = torch.cat(out + [spare])
            x = x + lay.o(a.transpose(1, 2).reshape(n, 1, self.hidden))
            h = F.layer_norm(x, (self.hidden,), *lay.ln2)
            q = lay.cq(h).view(n, 1, self.heads, self.head_dim).transpose(1, 2)
            out = [F.scaled_dot_product_attention(qw, w.cross_k[i], w.cross_v[i], attn_mask=w.cross_mask,
                                                  scale=self.scaling) for w, qw in zip(ws, q[:rows].split(sizes))]
            a = torch.cat(out + [spare])
            x = x + lay.co(a.transpose(1, 2).reshape(n, 1, self.hidden))
            h = F.layer_norm(x, (self.hidden,), *lay.ln3)
            x = x + lay.fc2(self.act(lay.fc1(h)))
        x = F.layer_norm(x, (self.hidden,), *self.final_ln)
        for w, logits in zip(ws, self._heads(x)[:rows].split(sizes)):
            w.logits.copy_(logits)

    # ------------------------------------------------------------------------------------------
    def _sample_eager(self, w: _Window) -> torch.Tensor:
        sp, t = w.sampling, w.t
        tok = pick(guided(w.logits, sp.cfg), sp, None if w.noise is None else w.noise[t])
        forced = w.table[t]
        tok = torch.where(forced < 0, tok, forced)
        w.seq[t].copy_(tok)
        return tok

    def start(self, text_states: torch.Tensor, text_mask: torch.Tensor, prompt: torch.Tensor | None,
              n_frames: int, sampling: SamplingConfig, seed: int,
              tick: Callable[[], None] | None = None) -> _Window:
        """A new eager window, prefilled alone (a prefill is compute-bound: batching it gains nothing):
        ready to join a batch at the next step."""
        w = self.new_window(text_states, text_mask, prompt, n_frames, sampling, seed, static=False)
        try:
            self._prefill(w, tick)
        except BaseException:
            w.release()
            raise
        w.t = w.prefix
        return w

    def step(self, ws: list[_Window]) -> None:
        """One decoding step of every window in `ws` (each at its own position): sample its token at w.t,
        feed it (not after its last position), advance. A step that raises (out of memory) leaves every
        window as it was: sampling again draws the same token and the cache rows are rewritten."""
        toks = [self._sample_eager(w) for w in ws]
        feed = [i for i, w in enumerate(ws) if w.t < w.length - 1]
        if feed:
            self.forward([ws[i] for i in feed], [toks[i] for i in feed])
        for w in ws:
            w.t += 1

    def result(self, w: _Window, prompt_frames: int, mode: str) -> LoopResult:
        """The codes of a finished window."""
        n_frames = w.length - self.channel_codebooks
        codes = codes_from_sequence(w.seq, n_frames, self.num_codebooks, self.audio_channels).cpu()
        fed = self._prompt_fed(w, prompt_frames) if prompt_frames else None
        return LoopResult(codes=codes, prompt=fed, steps=w.length - w.prefix, prefill_positions=w.prefix, mode=mode)

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
                    logits=torch.zeros((b, self.num_codebooks, self.vocab), device=dev, dtype=torch.float32),
                    sampling=sp)
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
        m = 0 if prompt is None else int(prompt.shape[-1])
        total = n_frames + self.channel_codebooks - m - 1  # tokens sampled after the prefill
        tick = (lambda: on_step(0, total)) if on_step is not None and m else None
        if not static:  # eager: the batched step, with a batch of one
            w = self.start(text_states, text_mask, prompt, n_frames, sampling, seed, tick)
            try:
                while not w.done:
                    self.step([w])
                    if on_step is not None:
                        on_step(w.t - w.prefix, total)
                return self.result(w, m, "eager")
            finally:
                w.release()
        return self._generate_static(text_states, text_mask, prompt, n_frames, sampling, seed, on_step, tick,
                                     graph_mode)

    def _prompt_fed(self, w: _Window, m: int) -> torch.Tensor:
        """The hand-off codes the decoder was conditioned on, read back from the window's sequence."""
        return codes_from_sequence(w.seq, m, self.num_codebooks, self.audio_channels).cpu()
