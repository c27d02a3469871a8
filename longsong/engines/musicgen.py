"""Engine `musicgen`: MusicGen (transformers' MusicgenForConditionalGeneration) in the GPU worker.

Settings (environment, read once at worker start; every one is also a constructor argument of
`MusicGenSettings`):

- LONGSONG_MODELS      comma-separated hub ids or local checkpoint directories
                       (default facebook/musicgen-small); all are loaded at start and stay resident;
                       a request's `model` picks one (the registry matches Engine.model or its basename).
- LONGSONG_DEVICE      auto | cpu | cuda (auto: CUDA when torch sees one).
- LONGSONG_DTYPE       auto | float32 | float16 | bfloat16 for the decoder (auto: float16 on CUDA,
                       float32 on CPU); the text encoder and EnCodec always run in float32.
- LONGSONG_QUANTIZE    none | int8: int8 dynamic quantization of the decoder's linear layers (CPU only).
- LONGSONG_CHANNELS    auto | 1 | 2: the output channels the worker must produce; a stereo model with 1
                       (or a mono model with 2) is an error at load.
- LONGSONG_CUDA_GRAPH  auto | 0 | 1: capture the decode step in a CUDA graph (auto: on CUDA).
- HF_HUB_OFFLINE=1 makes hub ids resolve from the local Hugging Face cache only.

Continuation is by tokens: a window's hand-off state (WindowResult.handoff) holds all its EnCodec codes
(int16 .npy plus a small JSON header); the next window's decoder is prefilled with the last
`context_frames` of them through MusicGen's delay pattern. Audio is never re-encoded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longsong.engines.base import EngineError, Progress, TransientEngineError, WindowRequest, WindowResult

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/musicgen-small"
FRAME_RATE = 50
MAX_WINDOW_FRAMES = 1500  # 30 s at 50 Hz: MusicGen's training length
HANDOFF_MAGIC = b"LSMGCODE"
HANDOFF_VERSION = 1
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_CHOICES = {
    "LONGSONG_DEVICE": ("auto", "cpu", "cuda"),
    "LONGSONG_DTYPE": ("auto", "float32", "float16", "bfloat16"),
    "LONGSONG_QUANTIZE": ("none", "int8"),
    "LONGSONG_CHANNELS": ("auto", "1", "2"),
    "LONGSONG_CUDA_GRAPH": ("auto", "0", "1"),
}


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class MusicGenSettings:
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    channels: int | None = None  # None: whatever the model produces
    cuda_graph: bool | None = None  # None: on CUDA

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "MusicGenSettings":
        env = os.environ if env is None else env

        def pick(name: str) -> str:
            value = (env.get(name) or _CHOICES[name][0]).strip().lower()
            if value not in _CHOICES[name]:
                raise EngineError(f"{name}={value!r} is not one of {', '.join(_CHOICES[name])}")
            return value

        models = [m.strip() for m in (env.get("LONGSONG_MODELS") or DEFAULT_MODEL).split(",") if m.strip()]
        channels = pick("LONGSONG_CHANNELS")
        graph = pick("LONGSONG_CUDA_GRAPH")
        return cls(models=list(dict.fromkeys(models)) or [DEFAULT_MODEL], device=pick("LONGSONG_DEVICE"),
                   dtype=pick("LONGSONG_DTYPE"), quantize=pick("LONGSONG_QUANTIZE"),
                   channels=None if channels == "auto" else int(channels),
                   cuda_graph=None if graph == "auto" else graph == "1")


def load_models_from_env() -> list["MusicGenEngine"]:
    """The engines of every model in LONGSONG_MODELS (loaded now, kept resident)."""
    settings = MusicGenSettings.from_env()
    return [load_engine(spec, settings) for spec in settings.models]


# ----------------------------------------------------------------------------------------------
# Checkpoint resolution


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec or os.path.exists(spec)


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file() and any((d / f).is_file() for f in WEIGHT_FILES)


def weights_hash(d: Path) -> str:
    """Content hash of a checkpoint directory's weight files (and config), for local checkpoints."""
    h = hashlib.sha256()
    names = sorted(p.name for p in d.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin") or p.name in ("config.json",) or p.name.endswith(".index.json")))
    for name in names:
        h.update(name.encode() + b"\0")
        with open(d / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def resolve_checkpoint(spec: str) -> tuple[Path, str]:
    """(local directory, revision) of a model id or path. Revision: the hub commit hash for hub ids (and
    for directories inside a hub cache snapshot), else a sha256 of the weight files."""
    if not spec or not isinstance(spec, str):
        raise EngineError(f"model: empty model id/path {spec!r}")
    expanded = Path(os.path.expanduser(spec))
    if expanded.is_dir():
        d = expanded.resolve()
        if not _has_weights(d):
            raise EngineError(
                f"model: local path {spec!r} has no MusicGen weights (expected config.json and model.safetensors "
                f"from save_pretrained, plus the processor's tokenizer files); point LONGSONG_MODELS at a "
                f"checkpoint directory or a hub id")
        if d.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", d.name):
            return d, d.name
        return d, weights_hash(d)
    if _looks_like_path(spec) or not HUB_ID_RE.match(spec):
        if expanded.exists():
            raise EngineError(f"model: local path {spec!r} is not a checkpoint directory")
        raise EngineError(
            f"model: {spec!r} is neither an existing local directory nor a hub id like facebook/musicgen-small; "
            f"set LONGSONG_MODELS to a hub id or to a directory holding config.json and model.safetensors")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
        local = Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=offline))
        if not _has_weights(local):  # an older checkpoint with only pytorch_model.bin
            local = Path(snapshot_download(spec, allow_patterns=patterns + ["*.bin"], local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - every failure mode gets the same actionable message
        kind = type(exc).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise EngineError(
                f"model: {spec!r} could not be fetched from the Hugging Face hub ({kind}); check the id, or set "
                f"LONGSONG_MODELS to a local checkpoint directory (config.json + model.safetensors + tokenizer)"
            ) from None
        raise EngineError(
            f"model: {spec!r} is not in the Hugging Face cache ({_hf_cache_dir()}) and the hub is unreachable "
            f"({kind}); download it where there is network (`hf download {spec}`) and copy that cache here "
            f"(HF_HOME), or save it to a directory and set LONGSONG_MODELS=/path/to/dir (config.json, "
            f"model.safetensors, tokenizer files)") from None
    if not _has_weights(local):
        raise EngineError(f"model: hub snapshot of {spec!r} at {local} has no weights (config.json + "
                          f"model.safetensors); set LONGSONG_MODELS to a local checkpoint directory")
    return local, local.name


# ----------------------------------------------------------------------------------------------
# Hand-off state


def encode_handoff(codes: np.ndarray, model: str, revision: str, audio_channels: int) -> bytes:
    """MAGIC, u32 header length, JSON header, then the codes (K, n) as an int16 .npy."""
    codes = np.ascontiguousarray(codes, dtype=np.int16)
    header = json.dumps({"format": "musicgen-codes", "version": HANDOFF_VERSION, "model": model,
                         "revision": revision, "codebooks": int(codes.shape[0]), "frames": int(codes.shape[1]),
                         "audio_channels": int(audio_channels), "frame_rate": FRAME_RATE}).encode()
    buf = io.BytesIO()
    np.save(buf, codes, allow_pickle=False)
    return HANDOFF_MAGIC + struct.pack("<I", len(header)) + header + buf.getvalue()


def decode_handoff(data: bytes) -> tuple[dict, np.ndarray]:
    """(header, codes (K, n) int64) of a hand-off state; EngineError (field `handoff`) when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:8]) != HANDOFF_MAGIC:
        raise EngineError("handoff: not a musicgen hand-off state (was the previous window made by another engine?)")
    data = bytes(data)
    try:
        (n,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12:12 + n])
        codes = np.load(io.BytesIO(data[12 + n:]), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"handoff: corrupt musicgen hand-off state ({type(exc).__name__})") from None
    if header.get("version") != HANDOFF_VERSION or codes.ndim != 2 or codes.dtype != np.int16 \
            or codes.shape != (header.get("codebooks"), header.get("frames")):
        raise EngineError(f"handoff: unsupported musicgen hand-off state (version {header.get('version')}, "
                          f"codes {codes.dtype} {codes.shape})")
    return header, codes.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Loading


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_engine(spec: str, settings: MusicGenSettings | None = None) -> "MusicGenEngine":
    """Resolve, load and prepare one model (raises EngineError with an actionable one-line message)."""
    settings = settings or MusicGenSettings()
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
    quantize = None if settings.quantize in (None, "none") else settings.quantize
    if quantize == "int8" and (device != "cpu" or dtype != "float32"):
        raise EngineError(f"LONGSONG_QUANTIZE=int8 (dynamic quantization) needs LONGSONG_DEVICE=cpu and float32, "
                          f"got {device}/{dtype}")
    if settings.cuda_graph and device != "cuda":
        raise EngineError("LONGSONG_CUDA_GRAPH=1 needs a CUDA device")

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
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"model: could not load MusicGen from {local} for {spec!r}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    model_channels = int(model.config.decoder.audio_channels)
    if settings.channels is not None and settings.channels != model_channels:
        kind = "stereo" if model_channels == 2 else "mono"
        raise EngineError(f"channels: model {spec!r} is {kind} ({model_channels} channel(s)) but "
                          f"LONGSONG_CHANNELS={settings.channels}; serve a "
                          f"{'mono' if settings.channels == 1 else 'stereo'} model or set LONGSONG_CHANNELS=auto")
    return MusicGenEngine(model, processor, spec, revision, device=device, dtype=dtype, quantize=quantize,
                          cuda_graph=settings.cuda_graph)


# ----------------------------------------------------------------------------------------------
# Engine


class MusicGenEngine:
    """One resident MusicGen model; generate() makes one window (<= 30 s) by token continuation."""

    name = "musicgen"

    def __init__(self, model, processor, model_id: str, revision: str, *, device: str = "cpu",
                 dtype: str = "float32", quantize: str | None = None, cuda_graph: bool | None = None):
        import torch

        from longsong.engines.musicgen_loop import DecodeLoop

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
                              f"the 50 Hz frame grid")
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
            raise EngineError(f"n_frames: {req.n_frames!r} must be a positive number of 50 Hz frames")
        if req.n_frames > MAX_WINDOW_FRAMES:
            raise EngineError(f"n_frames: a window of {req.n_frames} frames ({req.n_frames / FRAME_RATE:g} s) exceeds "
                              f"MusicGen's limit of {MAX_WINDOW_FRAMES} frames (30 s); use segment_s <= 30")
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

    def decode_audio(self, codes) -> np.ndarray:
        """(K, n) codes -> float32 (channels, n * hop): one EnCodec decode per channel, no chunking."""
        import torch

        n = int(codes.shape[-1])
        with torch.inference_mode():
            codes = codes.to(self._torch_device)
            dec = self._model.audio_encoder
            parts = [codes] if self.channels == 1 else [codes[0::2], codes[1::2]]
            audio = [dec.decode(p[None, None], [None]).audio_values[0, 0].float() for p in parts]
            out = torch.stack(audio).cpu().numpy()
        want = n * self.hop
        if out.shape[1] >= want:
            out = out[:, :want]
        else:
            out = np.pad(out, ((0, 0), (0, want - out.shape[1])))
        return np.ascontiguousarray(out, dtype=np.float32)

    def generate_codes(self, req: WindowRequest, progress: Progress | None = None):
        """The window's codes (LoopResult: codes (K, n), the prompt it was conditioned on, steps, mode)."""
        import torch

        from longsong.engines.musicgen_loop import SamplingConfig

        prompt = self.validate(req)
        sp = req.sampling
        sampling = SamplingConfig(temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p),
                                  cfg=float(sp.cfg), greedy=int(sp.top_k) == 1)
        states, mask = self.text_states(req.text)
        prompt_t = None if prompt is None else torch.from_numpy(prompt)
        return self.loop.generate(states, mask, prompt_t, req.n_frames, sampling, req.seed, progress)

    def generate(self, req: WindowRequest, progress: Progress) -> WindowResult:
        import torch

        batch = 2 if _finite(req.sampling.cfg) and req.sampling.cfg > 1 else 1
        with self._lock:
            try:
                res = self.generate_codes(req, progress)
                audio = self.decode_audio(res.codes)
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
