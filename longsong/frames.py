"""MusicGen's token grid: EnCodec frames at 50 Hz (640 samples at 32 kHz).

The plan, every engine and the manifest count time in these frames, so seams fall on the
grid whatever an engine's sample rate.
"""

FRAME_RATE = 50
