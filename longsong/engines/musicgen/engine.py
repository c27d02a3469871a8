"""Engine `musicgen`: MusicGen (transformers' MusicgenForConditionalGeneration) in the GPU worker.

Its settings are fields of `longsong.settings.Settings` (read once at worker start):

- models      (LONGSONG_MODELS) hub ids or local checkpoint directories; all are loaded at start and
              stay resident; a request's `model` picks one (the registry matches Engine.model or its basename).
- device      (LONGSONG_DEVICE) auto | cpu | cuda (auto: CUDA when torch sees one).
- dtype       (LONGSONG_DTYPE) of the decoder (auto: float16 on CUDA, float32 on CPU); the text encoder
              and EnCodec always run in float32.
- quantize    (LONGSONG_QUANTIZE) int8: dynamic quantization of the decoder's linear layers (CPU only).
- channels    (LONGSONG_CHANNELS) the output channels the worker must produce; a stereo model with 1
              (or a mono model with 2) is an error at load.
- cuda_graph  (LONGSONG_CUDA_GRAPH) capture the decode step in a CUDA graph (auto: on CUDA).
- gpu_batch   (LONGSONG_GPU_BATCH) windows of different songs decoded together (batching.py; 1: one
              window at a time under a lock, through the CUDA graph on CUDA; > 1: the eager batched step).
- gpu_memory_mb (LONGSONG_GPU_MEMORY_MB) the windows' buffer budget, shared by the worker's models.

A window is made by token continuation (handoff.py) with the engine's own decode loop (loop.py).
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np

from longsong.engines.base import EngineError, StepCallback, TransientEngineError, WindowRequest, WindowResult
from longsong.engines.musicgen.checkpoint import resolve_checkpoint
from longsong.engines.musicgen.handoff import decode_handoff, encode_handoff
from longsong.frames import FRAME_RATE
from longsong.settings import Settings

MAX_WINDOW_S = 30  # MusicGen's training length
MAX_WINDOW_FRAMES = MAX_WINDOW_S * FRAME_RATE


def load_models(settings: Settings) -> list["MusicGenEngine"]:
    """The engines of every model in settings.models (loaded now, kept resident)."""
    if not settings.models:
        raise EngineError("LONGSONG_MODELS lists no model; set it to hub ids or checkpoint directories "
                          "(e.g. facebook/musicgen-small)")
    from longsong.engines.musicgen.batching import Budget

    engines = [load_engine(spec, settings) for spec in settings.models]
    budget = Budget(memory_budget(settings, engines[0]._torch_device))
    for engine in engines:
        engine.serve(settings.gpu_batch, budget)
    return engines


def memory_budget(settings: Settings, device) -> int:
    """LONGSONG_GPU_MEMORY_MB in bytes, or what is free now (after the models loaded) when it is 0."""
    if settings.gpu_memory_mb:
        return int(settings.gpu_memory_mb * 2**20)
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0] * 0.9)
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 // 2


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_engine(spec: str, settings: Settings | None = None) -> "MusicGenEngine":
    """Resolve, load and prepare one model (raises EngineError with an actionable one-line message)."""
    settings = settings or Settings()
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise EngineError("LONGSONG_DEVICE=cuda but torch sees no CUDA device (use auto or cpu)")
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    if device == "cpu" and dtype == "float16":
        raise EngineError("LONGSONG_DTYPE=float16 is GPU-only; on CPU use float32 (optionally LONGSONG_QUANTIZE=int8)")
    quantize = None if settings.quantize == "none" else settings.quantize
    if quantize == "int8" and (device != "cpu" or dtype != "float32"):
        raise EngineError(f"LONGSONG_QUANTIZE=int8 (dynamic quantization) needs LONGSONG_DEVICE=cpu and float32, "
                          f"got {device}/{dtype}")
    cuda_graph = None if settings.cuda_graph == "auto" else settings.cuda_graph == "1"
    if cuda_graph and device != "cuda":
        raise EngineError("LONGSONG_CUDA_GRAPH=1 needs a CUDA device")
    channels = None if settings.channels == "auto" else int(settings.channels)

    local, revision = resolve_checkpoint(spec)
    try:
        cfg = json.loads((local / "config.json").read_text())
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"model: {spec!r}: unreadable config.json in {local} ({exc})") from None
    if cfg.get("model_type") != "musicgen":
        raise EngineError(f"model: {spec!r} is a {cfg.get('model_type')!r} checkpoint, not MusicGen "
                          f"(supported: facebook/musicgen-small/-medium/-large and the stereo-* variants)")
    try:
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        model = MusicgenForConditionalGeneration.from_pretrained(str(local), dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(str(local))
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"model: could not load MusicGen from {local} for {spec!r}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    model_channels = int(model.config.decoder.audio_channels)
    if channels is not None and channels != model_channels:
        kind = "stereo" if model_channels == 2 else "mono"
        raise EngineError(f"channels: model {spec!r} is {kind} ({model_channels} channel(s)) but "
                          f"LONGSONG_CHANNELS={channels}; serve a "
                          f"{'mono' if channels == 1 else 'stereo'} model or set LONGSONG_CHANNELS=auto")
    return MusicGenEngine(model, processor, spec, revision, device=device, dtype=dtype, quantize=quantize,
                          cuda_graph=cuda_graph)


class MusicGenEngine:
    """One resident MusicGen model; generate() makes one window (<= 30 s) by token continuation."""

    name = "musicgen"
    reuses_context_audio = True  # decodes only a window's new tokens (decode_from)

    def __init__(self, model, processor, model_id: str, revision: str, *, device: str = "cpu",
                 dtype: str = "float32", quantize: str | None = None, cuda_graph: bool | None = None):
        import torch

        from longsong.engines.musicgen.loop import DecodeLoop

        self.model = model_id
        self.version = revision
        self._torch_device = torch.device(device)
        self._dtype_name = dtype
        self._quantize = quantize
        audio_cfg = model.config.audio_encoder
        self.sample_rate = int(audio_cfg.sampling_rate)
        self.hop = int(np.prod(audio_cfg.upsampling_ratios))
        if self.sample_rate != self.hop * FRAME_RATE:
            raise EngineError(f"model: {model_id!r}: EnCodec at {self.sample_rate} Hz with hop {self.hop} is not on "
                              f"the {FRAME_RATE} Hz frame grid")
        if getattr(audio_cfg, "chunk_length_s", None) is not None:
            model.audio_encoder.config.chunk_length_s = None  # decode the window in one chunk
        self.channels = int(model.config.decoder.audio_channels)
        self.num_codebooks = int(model.config.decoder.num_codebooks)
        self.vocab = int(model.config.decoder.vocab_size)
        model.eval()
        model.requires_grad_(False)
        model.decoder.to(_torch_dtype(dtype))  # the decoder in the serving dtype; text encoder, EnCodec in fp32
        model.to(self._torch_device)
        self._model = model
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self._proj = getattr(model, "enc_to_dec_proj", None)
        self.loop = DecodeLoop(model, quantize=quantize, cuda_graph=cuda_graph)
        if quantize:
            self._drop_quantized_float_weights()
        self._lock = threading.Lock()
        self.max_batch = 1
        self._budget = None
        self._scheduler = None

    def serve(self, max_batch: int, budget) -> None:
        """Set the batch and the memory budget (load_models); EngineError at worker start when one full
        window at the default sampling cannot fit the budget."""
        from longsong.engines.musicgen.batching import MIB, TEXT_TOKENS_PLANNED, BatchScheduler, window_bytes
        from longsong.engines.musicgen.sampling import SamplingConfig

        need = window_bytes(self.loop, MAX_WINDOW_FRAMES, MAX_WINDOW_FRAMES - 1, SamplingConfig(), TEXT_TOKENS_PLANNED)
        if need > budget.total:
            raise EngineError(f"LONGSONG_GPU_MEMORY_MB: a budget of {budget.total / MIB:.1f} MiB is smaller than one "
                              f"{MAX_WINDOW_S} s window of {self.model} ({need / MIB:.1f} MiB of buffers); raise it "
                              f"(or 0: what is free)")
        self.max_batch, self._budget = max_batch, budget
        if max_batch > 1:
            self.loop.probe_row_tile(2 * max_batch)  # a window has up to 2 rows (CFG)
            self._scheduler = BatchScheduler(self.loop, max_batch, budget, self._decode_tickets, self.model)

    # --------------------------------------------------------------------------------------
    def _drop_quantized_float_weights(self) -> None:
        """With int8 the decoder's float linear weights (but the once-per-window cross keys/values) are dead:
        free them (the model object can no longer run stock generate)."""
        import torch

        for layer in self._model.decoder.model.decoder.layers:
            mods = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                    layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2]
            for mod in mods:
                mod.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        for head in self._model.decoder.lm_heads:
            head.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def describe(self) -> dict[str, str]:
        import torch
        import transformers

        return {
            "engine": self.name, "model": self.model, "revision": self.version,
            "device": str(self._torch_device), "dtype": self._dtype_name,
            "quantize": "int8-dynamic" if self._quantize == "int8" else "none",
            "decode_loop": self.loop.mode, "codebooks": str(self.num_codebooks), "channels": str(self.channels),
            "sample_rate": str(self.sample_rate), "torch": torch.__version__, "transformers": transformers.__version__,
        }

    # --------------------------------------------------------------------------------------
    def validate(self, req: WindowRequest) -> np.ndarray | None:
        """EngineError naming the field for every request this engine can never serve; returns the prompt codes."""
        sp = req.sampling
        if not isinstance(req.n_frames, int) or req.n_frames < 1:
            raise EngineError(f"n_frames: {req.n_frames!r} must be a positive number of {FRAME_RATE} Hz frames")
        if req.n_frames > MAX_WINDOW_FRAMES:
            raise EngineError(f"n_frames: a window of {req.n_frames} frames ({req.n_frames / FRAME_RATE:g} s) exceeds "
                              f"MusicGen's limit of {MAX_WINDOW_FRAMES} frames ({MAX_WINDOW_S} s); use segment_s <= {MAX_WINDOW_S}")
        if not isinstance(req.context_frames, int) or not 0 <= req.context_frames < req.n_frames:
            raise EngineError(f"context_frames: {req.context_frames!r} must be in [0, n_frames={req.n_frames})")
        if isinstance(sp.top_k, bool) or not isinstance(sp.top_k, int) or sp.top_k < 0:
            raise EngineError(f"top_k: {sp.top_k!r} must be an integer >= 0 (0: off)")
        if not _finite(sp.top_p) or not 0.0 <= sp.top_p <= 1.0:
            raise EngineError(f"top_p: {sp.top_p!r} must be in [0, 1] (0 or 1: off)")
        if not _finite(sp.temperature) or sp.temperature <= 0.0:
            raise EngineError(f"temperature: {sp.temperature!r} must be > 0")
        if not _finite(sp.cfg) or sp.cfg < 1.0:
            raise EngineError(f"cfg: {sp.cfg!r} must be >= 1 (classifier-free guidance scale; 1: off)")
        if not isinstance(req.seed, int) or isinstance(req.seed, bool) or not 0 <= req.seed < 2**63:
            raise EngineError(f"seed: {req.seed!r} must be an integer in [0, 2**63)")
        if not isinstance(req.text, str):
            raise EngineError(f"text: {type(req.text).__name__} is not a string")
        if req.context_frames == 0:
            return None
        if req.handoff is None:
            raise EngineError(f"handoff: context_frames={req.context_frames} needs the previous window's "
                              f"hand-off state")
        header, codes = decode_handoff(req.handoff)
        if codes.shape[0] != self.num_codebooks:
            raise EngineError(f"handoff: {codes.shape[0]} codebooks from {header.get('model')!r}, but {self.model!r} "
                              f"uses {self.num_codebooks} (mono and stereo models cannot continue each other)")
        if (header.get("model"), header.get("revision")) != (self.model, self.version):
            raise EngineError(f"handoff: the previous window was made by {header.get('model')!r} revision "
                              f"{header.get('revision')}, this one would run {self.model!r} revision {self.version}: "
                              f"every window of a song uses one model")
        if codes.shape[1] < req.context_frames:
            raise EngineError(f"context_frames: {req.context_frames} exceeds the {codes.shape[1]} frames of the "
                              f"previous window's hand-off state")
        if codes.min() < 0 or codes.max() >= self.vocab:
            raise EngineError(f"handoff: codes outside [0, {self.vocab})")
        return codes[:, codes.shape[1] - req.context_frames:]

    def text_states(self, text: str):
        """(1, S, D_decoder) text condition and its (1, S) mask, as MusicgenForConditionalGeneration builds them."""
        import torch

        enc = self._tokenizer([text], return_tensors="pt", padding=True, truncation=True, max_length=512)
        ids = enc["input_ids"].to(self._torch_device)
        mask = enc["attention_mask"].to(self._torch_device)
        with torch.inference_mode():
            states = self._model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if self._proj is not None:
                states = self._proj(states)
        return states, mask

    def decode_from(self, req: WindowRequest) -> int:
        """The frame a window's audio is decoded from: with the previous window's audio at hand its context is
        reused up to RIGHT_MARGIN_FRAMES before the seam (where that audio stops matching one decode of the whole
        token sequence) and only the rest is decoded, WARMUP_FRAMES of context in front (codec.py); else 0."""
        from longsong.engines.musicgen.codec import RIGHT_MARGIN_FRAMES, WARMUP_FRAMES

        audio, context = req.context_audio, req.context_frames
        if audio is None or context < WARMUP_FRAMES + RIGHT_MARGIN_FRAMES:  # the warm-up needs its own tokens
            return 0
        if audio.shape != (self.channels, context * self.hop):
            raise EngineError(f"context_audio: shape {audio.shape} is not (channels={self.channels}, "
                              f"context_frames={context} x hop {self.hop})")
        return context - RIGHT_MARGIN_FRAMES

    def decode_windows(self, items: list[tuple[int, np.ndarray | None, object]]) -> list[np.ndarray]:
        """(decode_from, context audio, codes (K, n)) of windows -> their audio (channels, n * hop): windows with
        codes of one shape and one decode_from share one EnCodec call."""
        from longsong.engines.musicgen.codec import WARMUP_FRAMES, decode_spans

        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (start, _, codes) in enumerate(items):
            groups.setdefault((start, tuple(codes.shape)), []).append(i)
        for (start, _), idx in groups.items():
            spans = decode_spans(self._model.audio_encoder, [items[i][2] for i in idx], start, WARMUP_FRAMES,
                                 self.channels)
            for i, span in zip(idx, spans):
                reused = items[i][1]
                out[i] = np.ascontiguousarray(np.concatenate([reused[:, :start * self.hop], span], axis=1)
                                              if start else span, dtype=np.float32)
        return out

    def _decode_tickets(self, done: list) -> list[np.ndarray]:
        return self.decode_windows([(t.decode_from, t.context_audio, codes) for t, codes in done])

    def ticket(self, req: WindowRequest):
        """The validated request as the decode loop takes it (batching.Ticket), its buffers counted; the codes of a
        window alone are `self.loop.generate(t.text_states, t.text_mask, t.prompt, t.n_frames, t.sampling, t.seed)`."""
        import torch

        from longsong.engines.musicgen.batching import Budget, Ticket, check_fits, window_bytes
        from longsong.engines.musicgen.sampling import SamplingConfig

        prompt = self.validate(req)
        sp = req.sampling
        sampling = SamplingConfig(temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p),
                                  cfg=float(sp.cfg), greedy=int(sp.top_k) == 1)
        states, mask = self.text_states(req.text)
        prompt_t = None if prompt is None else torch.from_numpy(prompt)
        need = window_bytes(self.loop, req.n_frames, req.context_frames, sampling, int(states.shape[1]))
        t = Ticket(states, mask, prompt_t, req.n_frames, sampling, req.seed, need, self.decode_from(req),
                   req.context_audio)
        check_fits(t, self._budget or Budget(2**62), self.model, self.max_batch)
        return t

    def _batched(self, req: WindowRequest, on_step: StepCallback):
        """Submit the window to the scheduler and wait, heart-beating its progress; an exception from
        on_step (the activity was cancelled) takes the window out of the batch."""
        import torch

        t = self.ticket(req)
        try:
            self._scheduler.submit(t)
            while not t.wait(0.5):
                on_step(*t.progress)
        except BaseException:
            t.cancelled = True
            raise
        err = t.error
        if isinstance(err, torch.OutOfMemoryError):  # in the batch's EnCodec decode
            raise TransientEngineError(f"out of memory on {self._torch_device} decoding a window: model={self.model}, "
                                       f"LONGSONG_GPU_BATCH={self.max_batch}, window={req.n_frames} frames") from None
        if isinstance(err, EngineError):  # one object per activity thread (several windows may share the error)
            raise EngineError(str(err)) from None
        if isinstance(err, TransientEngineError):
            raise TransientEngineError(str(err)) from None
        if err is not None:
            raise err
        on_step(*t.progress)
        return t

    def generate(self, req: WindowRequest, on_step: StepCallback) -> WindowResult:
        import torch

        batch = 2 if _finite(req.sampling.cfg) and req.sampling.cfg > 1 else 1
        if self._scheduler is not None:
            t = self._batched(req, on_step)
            res, audio, windows = t.result, t.audio, t.batch_max
        else:
            windows = 1
            with self._lock:
                try:
                    t = self.ticket(req)
                    res = self.loop.generate(t.text_states, t.text_mask, t.prompt, t.n_frames, t.sampling, t.seed,
                                             on_step)
                    (audio,) = self._decode_tickets([(t, res.codes)])
                except torch.OutOfMemoryError:
                    self._free()
                    raise TransientEngineError(
                        f"out of memory on {self._torch_device} generating a window: model={self.model}, "
                        f"batch={batch} ({'CFG' if batch == 2 else 'no CFG'}), window={req.n_frames} frames "
                        f"(context {req.context_frames}), dtype={self._dtype_name}") from None
                except BaseException:
                    self._free()
                    raise
        handoff = encode_handoff(res.codes.numpy(), self.model, self.version, self.channels)
        sp = req.sampling
        details = self.describe()
        details.update({
            "decode_loop": res.mode, "steps": str(res.steps), "prefill_positions": str(res.prefill_positions),
            "context_frames": str(req.context_frames), "handoff": "tokens",
            "batch": str(windows), "gpu_batch": str(self.max_batch),
            "decoded_from_frame": str(t.decode_from),
            "sampling": f"temperature={sp.temperature:g},top_k={sp.top_k},top_p={sp.top_p:g},cfg={sp.cfg:g}",
        })
        return WindowResult(audio=audio, handoff=handoff, details=details)

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
