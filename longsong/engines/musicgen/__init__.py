"""Engine `musicgen`: MusicGen through transformers, with its own decode loop.

Importing the package (say, for decode_handoff) does not import torch: that waits for the first
model loaded. The torch-side modules (loop, sampling, delay, linears) are imported by their own name.
"""

from longsong.engines.musicgen.checkpoint import weights_hash
from longsong.engines.musicgen.engine import MusicGenEngine, load_engine, load_models
from longsong.engines.musicgen.handoff import decode_handoff, encode_handoff

__all__ = ["MusicGenEngine", "decode_handoff", "encode_handoff", "load_engine", "load_models", "weights_hash"]
