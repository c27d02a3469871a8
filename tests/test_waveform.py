"""Waveform preview: a PNG of the fixed size, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longsong.audio.waveform import HEIGHT_PX, WIDTH_PX, render_waveform

SR = 32000


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("channels", [1, 2])
def test_renders_png_of_expected_size(channels: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(channels)
    t = np.arange(40 * SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.1 * t)) / 2
             + 0.05 * rng.standard_normal((channels, t.size))).astype(np.float32)
    path = tmp_path / "waveform.png"
    render_waveform(audio, SR, path, seams_s=[12.0, 30.0], title="Test — seams at 0:12 and 0:30")
    assert _png_size(path) == (WIDTH_PX, HEIGHT_PX)
    assert [p.name for p in tmp_path.iterdir()] == ["waveform.png"]


def test_tiny_and_silent_input(tmp_path: Path) -> None:
    path = tmp_path / "silent.png"
    render_waveform(np.zeros((2, 100), np.float32), SR, path, seams_s=[], title="silence")
    assert _png_size(path) == (WIDTH_PX, HEIGHT_PX)
    with pytest.raises(ValueError, match="empty"):
        render_waveform(np.zeros((2, 0), np.float32), SR, tmp_path / "empty.png", [], "empty")
