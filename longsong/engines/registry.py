"""Which engines and models a GPU worker serves; loaded once per process and reused."""

from __future__ import annotations

import os

from longsong.engines.base import Engine, EngineError
from longsong.settings import Settings


class EngineRegistry:
    def __init__(self, engines: list[Engine]):
        self._engines = engines

    @classmethod
    def from_settings(cls, settings: Settings) -> "EngineRegistry":
        """LONGSONG_ENGINES (default "procedural"); musicgen loads every model in LONGSONG_MODELS."""
        engines: list[Engine] = []
        for name in settings.engines:
            if name == "procedural":
                from longsong.engines.procedural import ProceduralEngine

                engines.append(ProceduralEngine())
            elif name == "musicgen":
                from longsong.engines.musicgen import load_models

                engines.extend(load_models(settings))
        return cls(engines)

    def slots(self, concurrency: int) -> int:
        """Segment activities the GPU worker runs at once: LONGSONG_GPU_CONCURRENCY, or more when an engine
        batches windows (a batch of 4 needs 4 activities in flight to fill it)."""
        return max([concurrency] + [getattr(e, "max_batch", 1) for e in self._engines])

    def served(self) -> list[str]:
        return [f"{e.name}:{e.model}" for e in self._engines]

    def get(self, engine: str, model: str | None) -> Engine:
        candidates = [e for e in self._engines if e.name == engine]
        if not candidates:
            raise EngineError(
                f"engine: {engine!r} is not served by this GPU worker (serves: {', '.join(self.served())}); "
                f"start worker_gpu.py with LONGSONG_ENGINES including {engine!r}")
        if model is None:
            return candidates[0]
        for e in candidates:
            if model in (e.model, os.path.basename(e.model.rstrip('/'))):
                return e
        raise EngineError(
            f"model: {model!r} is not served for engine {engine!r} (serves: "
            f"{', '.join(e.model for e in candidates)}); add it to LONGSONG_MODELS (hub id or local "
            f"directory) on the GPU worker")
