"""Tiny random MusicGen checkpoints for tests (no download).

`build_tiny_checkpoint(path, stereo=False)` writes, with save_pretrained, a directory laid out like a
hub checkpoint of facebook/musicgen-small (config.json, generation_config.json, model.safetensors,
tokenizer + feature extractor of the processor):

- text encoder: a 1-layer T5 encoder and a T5Tokenizer built from a small Unigram vocabulary;
- audio codec: EnCodec at 32 kHz with upsampling ratios 8*5*4*4 = 640 (hop 640: the 50 Hz frame grid
  holds), 4 codebooks of 64 entries;
- decoder: 2 layers, width 32, 4 codebooks (mono) or 8 interleaved left/right codebooks (stereo), as
  facebook/musicgen-stereo-*; pad/BOS token = vocab size (64), as 2048 is for the real models.

It loads through the same code path as real checkpoints (LONGSONG_MODELS=<dir>).
"""

from __future__ import annotations

import string
from pathlib import Path

VOCAB = 64  # codebook entries; the pad/BOS token is VOCAB

_WORDS = (
    "rock pop jazz funk soul metal ambient piano guitar drums bass synth strings violin calm upbeat "
    "happy sad dark bright lofi house techno slow fast bpm major minor key outro ending final cadence "
    "intro verse chorus bridge song track music with and the of in a"
).split()


def _tokenizer():
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in _WORDS]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.digits + ",.-#'"]
    vocab += [("\u2581" + c, -6.0) for c in string.ascii_lowercase + string.digits]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def small_encodec_config():
    """The EnCodec config of facebook/musicgen-small (32 kHz, hop 640, 4 codebooks of 2048): tests and
    benchmarks build it with random weights, its architecture decides decode cost and receptive field."""
    from transformers import EncodecConfig

    return EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                         target_bandwidths=[2.2], hidden_size=128, codebook_dim=128, num_filters=64,
                         num_residual_layers=1, num_lstm_layers=2, norm_type="weight_norm", use_causal_conv=False,
                         compress=2, use_conv_shortcut=False, chunk_length_s=None, overlap=None, normalize=False,
                         pad_mode="reflect", kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
                         dilation_growth_rate=2, trim_right_ratio=1.0)


def build_tiny_checkpoint(path: str | Path, stereo: bool = False, seed: int = 0) -> Path:
    """Write a tiny random MusicGen checkpoint (mono: 4 codebooks; stereo: 8) to `path`; return it."""
    import torch
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    text_cfg = T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
        num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    audio_cfg = EncodecConfig(
        sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], codebook_size=VOCAB,
        target_bandwidths=[1.2],  # 1200 bit/s / (50 Hz * 6 bit) = 4 quantizers
        hidden_size=16, codebook_dim=16, num_filters=4, num_residual_layers=1, num_lstm_layers=1,
        norm_type="weight_norm", use_causal_conv=False, compress=2, use_conv_shortcut=False,
        chunk_length_s=None, overlap=None, normalize=False, pad_mode="reflect",
    )
    assert audio_cfg.hop_length == 640 and audio_cfg.num_quantizers == 4
    channels = 2 if stereo else 1
    dec_cfg = MusicgenDecoderConfig(
        vocab_size=VOCAB, max_position_embeddings=2048, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, hidden_size=32, num_codebooks=4 * channels, audio_channels=channels,
        pad_token_id=VOCAB, bos_token_id=VOCAB, dropout=0.1, activation_function="gelu",
    )
    config = MusicgenConfig(text_encoder=text_cfg, audio_encoder=audio_cfg, decoder=dec_cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed + (1 if stereo else 0))
        model = MusicgenForConditionalGeneration(config)
        with torch.no_grad():
            # sharper, more varied token distributions than the default 0.02 init
            for head in model.decoder.lm_heads:
                head.weight.normal_(0.0, 0.5)
            for emb in model.decoder.model.decoder.embed_tokens:
                emb.weight.normal_(0.0, 1.0)
            # EnCodec initialises its codebooks to zeros (every code would decode to the same audio)
            for layer in model.audio_encoder.quantizer.layers:
                layer.codebook.embed.normal_(0.0, 1.0)
                layer.codebook.embed_avg.copy_(layer.codebook.embed)
                layer.codebook.cluster_size.fill_(1.0)
    model.generation_config = GenerationConfig(
        do_sample=True, guidance_scale=3.0, max_length=1500,
        pad_token_id=VOCAB, decoder_start_token_id=VOCAB, bos_token_id=VOCAB,
    )
    model.save_pretrained(path)
    feature_extractor = EncodecFeatureExtractor(feature_size=channels, sampling_rate=32000, padding_value=0.0)
    MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


if __name__ == "__main__":  # python tests/tiny_musicgen.py OUTDIR [--stereo]
    import sys

    out = build_tiny_checkpoint(sys.argv[1], stereo="--stereo" in sys.argv)
    print(out)
