"""Final-file encoding and decoding with the ffmpeg binary shipped in the imageio-ffmpeg wheel.

Samples travel as raw interleaved float32 over pipes, so no intermediate files or system ffmpeg
are needed. Outputs are written to a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np

from longsong.atomic import replacing

AI_COMMENT = "AI-generated music (longsong)"

# Per format: ffmpeg muxer name and output options (codec, bitrate, rate).
_OUTPUT_OPTIONS: dict[str, dict[str, str | int]] = {
    "wav": {"format": "wav", "acodec": "pcm_s24le"},
    "flac": {"format": "flac", "acodec": "flac", "sample_fmt": "s32"},
    # LAME -q 7: 2.5x faster than the default search; at 320 kbps CBR the bitrate, not the search, bounds quality.
    "mp3": {"format": "mp3", "acodec": "libmp3lame", "audio_bitrate": "320k", "compression_level": 7,
            "id3v2_version": 3},
    "opus": {"format": "opus", "acodec": "libopus", "audio_bitrate": "192k", "ar": 48000},
}
# Options that belong to the muxer rather than the encoder (the tee muxer takes them per output).
_MUXER_OPTIONS = frozenset({"format", "id3v2_version"})
_DEMUXERS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "ogg"}  # reading a muxer's output back
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}
EXTENSIONS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "opus"}  # file suffix, no dot

# RIFF INFO tags ffmpeg's WAV muxer writes; other keys would be dropped silently.
_WAV_INFO_KEYS = frozenset(
    {"title", "artist", "album", "comment", "copyright", "date", "genre", "language", "track"}
)


class FfmpegMissing(RuntimeError):
    """No usable ffmpeg binary."""


class FfmpegError(RuntimeError):
    """ffmpeg ran but failed."""


def ffmpeg_exe() -> str:
    """The imageio-ffmpeg binary (or IMAGEIO_FFMPEG_EXE), checked to exist, since imageio-ffmpeg
    returns the environment variable unverified."""
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        exe = None
    resolved = exe and (shutil.which(exe) or (exe if os.path.isfile(exe) else None))
    if not resolved:
        raise FfmpegMissing(
            f"ffmpeg binary not found ({exe or 'none bundled'}): "
            "run `pip install imageio-ffmpeg` or set IMAGEIO_FFMPEG_EXE to an ffmpeg executable"
        )
    return resolved


def _run(stream: ffmpeg.nodes.OutputStream, data: bytes | None = None) -> bytes:
    """Run an ffmpeg-python graph: `data` to its stdin, its stdout back; one-line errors."""
    exe = ffmpeg_exe()
    return _run_chain([("", stream.compile(cmd=exe))], data)


def _run_chain(commands: list[tuple[str, list[str]]], data: bytes | None, cwd: Path | None = None) -> bytes:
    """Run (role, argv) commands as a shell pipeline: `data` into the first, each stdout into the
    next's stdin, the last one's stdout returned. Input goes in one write from a thread (not
    communicate()'s 4 KB select loop); stderr goes to temp files, so nothing can deadlock. A
    failure raises FfmpegError with each failed command's last stderr line (prefixed by its role)."""
    procs: list[subprocess.Popen] = []
    errs = [tempfile.TemporaryFile() for _ in commands]
    writer = None
    try:
        upstream = subprocess.PIPE if data is not None else subprocess.DEVNULL
        for (_, argv), err in zip(commands, errs):
            argv = [argv[0], "-hide_banner", "-nostats", "-loglevel", "error", *argv[1:]]  # stderr: errors only
            try:
                procs.append(subprocess.Popen(argv, stdin=upstream, stdout=subprocess.PIPE, stderr=err, cwd=cwd))
            except OSError as exc:
                raise FfmpegMissing(f"cannot run ffmpeg {argv[0]!r}: {exc}") from None
            if len(procs) > 1:
                procs[-2].stdout.close()  # the next command holds the read end now
            upstream = procs[-1].stdout
        if data is not None:
            writer = threading.Thread(target=_feed, args=(procs[0].stdin, data), daemon=True)
            writer.start()
        out = procs[-1].stdout.read()
        if writer is not None:
            writer.join()
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failures = []
    for (role, _), code, err in zip(commands, codes, errs):
        if code != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            failures.append(f"{role + ': ' if role else ''}{lines[-1] if lines else f'exit code {code}'}")
    for err in errs:
        err.close()
    if failures:
        raise FfmpegError(f"ffmpeg failed: {'; '.join(failures)}")
    return out


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except BrokenPipeError:  # ffmpeg stopped early; its exit code and stderr say why
        pass
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def _metadata_options(fmt: str, tags: dict[str, str]) -> dict[str, str]:
    """`-metadata` options for the tags (comment defaults to an AI disclosure).

    ffmpeg-python emits one option per dict key, so each tag gets its own key
    `metadata:g:<n>`; ffmpeg ignores what follows the `g` (global) specifier.
    WAV INFO only holds a fixed set of keys, so other tags are folded into its comment.
    """
    tags = {"comment": AI_COMMENT, **tags}
    if fmt == "wav":
        extra = [f"{k}={v}" for k, v in tags.items() if k not in _WAV_INFO_KEYS]
        tags = {k: v for k, v in tags.items() if k in _WAV_INFO_KEYS}
        tags["comment"] = "\n".join([tags["comment"], *extra])
    return {f"metadata:g:{i:03d}": f"{k}={v}" for i, (k, v) in enumerate(tags.items())}


def encode(audio: np.ndarray, sr: int, fmt: str, path: str | Path, tags: dict[str, str]) -> None:
    """Encode float audio (channels, samples) to `path` as wav (24-bit), flac, mp3 (320k CBR)
    or opus (192k, 48 kHz, Ogg), with `tags` as container metadata."""
    audio, options = _prepare(audio, fmt)
    with replacing(path) as tmp:
        stream = _pcm_input(audio, sr).output(str(tmp), **options, **_metadata_options(fmt, tags))
        _run(stream.overwrite_output(), np.ascontiguousarray(audio.T).tobytes())


def encode_and_decode(audio: np.ndarray, sr: int, fmt: str, path: str | Path,
                      tags: dict[str, str]) -> tuple[np.ndarray, int]:
    """`encode`, and decode the encoded stream back while it is being written: ffmpeg's tee muxer
    writes the file and a copy of the same packets to a pipe that a second ffmpeg decodes. Checking
    what a lossy codec did then costs no extra pass. The piped copy has no Xing/Info header (only the
    seekable file gets one), so the decoded audio may keep the encoder delay and padding: fine for
    peak measurements, not for sample alignment."""
    audio, options = _prepare(audio, fmt)
    path = Path(path)
    muxer = {k: v for k, v in options.items() if k in _MUXER_OPTIONS}
    codec = {k: v for k, v in options.items() if k not in _MUXER_OPTIONS}
    spec = ":".join(f"f={muxer['format']}" if k == "format" else f"{k}={v}" for k, v in muxer.items())
    exe = ffmpeg_exe()
    decoder = ffmpeg.input("pipe:0", format=_DEMUXERS[fmt]).output(
        "pipe:1", format="wav", acodec="pcm_f32le", map_metadata=-1)
    with replacing(path) as tmp:  # the tee spec names the file relative to the folder ffmpeg runs in
        encoder = _pcm_input(audio, sr).output(
            f"[{spec}]{tmp.name}|[f={muxer['format']}]pipe:1", format="tee", map="0:a", **codec,
            **_metadata_options(fmt, tags)).overwrite_output()
        decoded = _run_chain([("encoder", encoder.compile(cmd=exe)), ("decoder", decoder.compile(cmd=exe))],
                             np.ascontiguousarray(audio.T).tobytes(), cwd=path.parent)
    return _parse_wav_pipe(decoded)


def _prepare(audio: np.ndarray, fmt: str) -> tuple[np.ndarray, dict[str, str | int]]:
    if fmt not in _OUTPUT_OPTIONS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(_OUTPUT_OPTIONS)}")
    return np.atleast_2d(np.asarray(audio, dtype=np.float32)), _OUTPUT_OPTIONS[fmt]


def _pcm_input(audio: np.ndarray, sr: int):
    return ffmpeg.input("pipe:", format="f32le", ac=audio.shape[0], ar=sr)


def _parse_wav_pipe(data: bytes) -> tuple[np.ndarray, int]:
    """Float32 WAV as streamed by ffmpeg (sizes unset), walking chunks to `data`."""
    pos, channels, sr = 12, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"fmt ":
            channels = int.from_bytes(data[pos + 10 : pos + 12], "little")
            sr = int.from_bytes(data[pos + 12 : pos + 16], "little")
        elif chunk_id == b"data":
            body = data[pos + 8 :]
            samples = np.frombuffer(body[: len(body) // (4 * channels) * 4 * channels], "<f4")
            return samples.reshape(-1, channels).T.copy(), sr
        pos += 8 + size + (size & 1)
    raise FfmpegError("ffmpeg failed: decoded stream has no WAV data chunk")


def decode(path: str | Path, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode any ffmpeg-readable file to float32 (channels, samples) at its own rate, or
    resampled to `sr`. Decoding to a float WAV pipe gives rate and channels without ffprobe."""
    options: dict[str, str | int] = {"format": "wav", "acodec": "pcm_f32le", "map_metadata": -1}
    if sr is not None:
        options["ar"] = sr
    return _parse_wav_pipe(_run(ffmpeg.input(str(path)).output("pipe:", **options)))


def damage(path: str | Path) -> str | None:
    """The first error ffmpeg reports while decoding the whole file (a truncated WAV, FLAC or MP3 shows
    one; a decode still succeeds, so `decode` alone cannot tell), or None for an intact file."""
    argv = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(path), "-f", "null", "-"]
    run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    lines = [line.split("] ", 1)[-1] for line in run.stderr.strip().splitlines()]
    return lines[0] if lines else (f"exit code {run.returncode}" if run.returncode else None)


def read_tags(path: str | Path) -> dict[str, str]:
    """Container metadata of a file: global tags plus the first audio stream's (Ogg keeps its
    vorbis comments on the stream), via ffmpeg's ffmetadata text format."""
    tags: dict[str, str] = {}
    for source in ("0", "0:s:a:0"):
        text = _run(ffmpeg.input(str(path)).output("pipe:", format="ffmetadata", map_metadata=source))
        tags.update(_parse_ffmetadata(text.decode()))
    return tags


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """Key=value pairs of an ffmetadata dump; backslash escapes `=;#\\` and newlines."""
    tags: dict[str, str] = {}
    key, value, escaped, in_value = [], [], False, False
    for ch in text.split("\n", 1)[1] if "\n" in text else "":
        if escaped:
            (value if in_value else key).append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and not in_value:
            in_value = True
        elif ch == "\n":
            if in_value:
                tags["".join(key)] = "".join(value)
            key, value, in_value = [], [], False
        else:
            (value if in_value else key).append(ch)
    if in_value:
        tags["".join(key)] = "".join(value)
    return tags
