"""Resolving a model spec (a hub id or a local checkpoint directory) to a local directory and the
revision recorded with every track: the hub commit hash, or a hash of a local directory's weights.

HF_HUB_OFFLINE=1 makes hub ids resolve from the local Hugging Face cache only.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from longsong.engines.base import EngineError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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
