"""The CLI's exit codes and errors, and the commands that need no Temporal server: `dev` and `verify`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from longsong.settings import Settings

EXIT_OK, EXIT_NOT_FOUND_MARK, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_FAILED, EXIT_NO_SONG = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_ERROR = 1


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def verify_command(a: argparse.Namespace, settings: Settings) -> int:
    from longsong import credentials
    from longsong.audio.encode import FfmpegError, damage, decode
    from longsong.audio.watermark import detect

    path = Path(a.file)
    if path.is_dir():
        raise CliError(f"file: {a.file} is a directory, not an audio file")
    if not path.is_file():
        raise CliError(f"file: {a.file} does not exist")
    try:
        audio, sr = decode(a.file)
    except FfmpegError as e:
        raise CliError(f"file: {a.file} is not audio ffmpeg can decode ({str(e).splitlines()[0]})") from None
    if audio.size == 0:
        raise CliError(f"file: {a.file} holds no audio samples")
    if problem := damage(path):
        raise CliError(f"file: {a.file} is damaged or truncated (ffmpeg: {problem})")
    try:  # the C2PA manifest, trusted when signed by the configured (or dev) CA
        creds = credentials.read(path, credentials.trust_anchor(settings))
    except ValueError as e:
        raise CliError(f"file: {a.file} is {e}") from None
    d = detect(audio, sr, settings.watermark_secret)
    if a.json:
        print_json({"file": a.file, "found": d.found, "watermark_id": d.track_id, "confidence": d.confidence,
                    "marks": [asdict(m) for m in d.marks], "credentials": asdict(creds)})
    else:
        for m in d.marks:
            speed = f", at {100 * (m.speed - 1):+.2f} % speed" if m.speed != 1.0 else ""
            print(f"found: watermark id {m.track_id} (0x{m.track_id:08x}), confidence {m.confidence:.2f}{speed}; "
                  f"in {', '.join(f'{clock(s.start_s)}-{clock(s.end_s)}' for s in m.spans) or 'no 5 s window alone'}")
        if not d.found:
            print(f"not found (confidence {d.confidence:.2f})")
        print(f"content credentials: {credentials_line(creds)}")
    return EXIT_OK if d.found else EXIT_NOT_FOUND_MARK


def clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def credentials_line(c) -> str:
    if not c.present:
        return c.errors[0] if c.errors else "none"
    state = "trusted" if c.trusted else "valid, untrusted signer" if c.valid else "INVALID (the file was modified)"
    claim = c.claim
    made = (f"song {claim.get('song_id')}, {claim.get('engine')} engine, model {claim.get('model')} "
            f"{claim.get('model_version')}, watermark id {claim.get('watermark_id')}"
            + (f", parent {c.parent}" if c.parent else ""))
    problems = [e for e in c.errors if not e.startswith("signingCredential.untrusted")]
    return f"{state}; C2PA, signed by {c.signer!r}; {made}" + (f"; {'; '.join(problems)}" if problems else "")


def dev_command(a: argparse.Namespace, settings: Settings) -> int:
    from longsong import devstack

    if a.action == "up":
        devstack.up(settings)
        print(f"local stack up: Temporal at {devstack.address(settings)}, Web UI {settings.web_ui}, "
              f"data in {settings.home}")
    elif a.action == "down":
        stopped = devstack.down(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    running = devstack.services(settings) if a.action != "down" else []
    for svc in running:
        state = f"running (pid {svc.pid})" if svc.alive else "stopped"
        print(f"  {svc.name:11s} {state:22s} log {svc.log}")
    if any(svc.name == "api" and svc.alive for svc in running):
        print(f"listening page: http://127.0.0.1:{settings.api_port}/  (API docs /docs)\n"
              f"API key (user {devstack.DEV_KEY_USER}): {devstack.dev_key(settings)}")
    return EXIT_OK
