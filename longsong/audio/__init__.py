"""Audio stages on whole tracks: assemble, loudness, true peak, limiter, mastering, watermark, encode, waveform."""
