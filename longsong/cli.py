"""`longsong` command line: dev stack, generate, status, cancel, list, download, verify.

Exit codes: 0 success, 1 watermark not found, 2 bad input, 3 Temporal unreachable, 4 song failed.
Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from longsong.process import exit_process
from longsong.request import FORMATS, InvalidRequest, Section, SongRequest
from longsong.settings import Settings, SettingsError

EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_FAILED = 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def _section(text: str) -> Section:
    start, sep, prompt = text.partition(":")
    try:
        return Section(float(start), prompt.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:PROMPT (e.g. 30:chorus), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longsong", description="Full-length AI songs on Temporal.")
    p.add_argument("--address", help="Temporal address (default: TEMPORAL_ADDRESS / profile / localhost:7233)")
    p.add_argument("--namespace", help="Temporal namespace (default: TEMPORAL_NAMESPACE or 'default')")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="local stack: Temporal dev server + both workers")
    dev.add_argument("action", choices=["up", "down", "status"])

    g = sub.add_parser("generate", help="submit a song")
    g.add_argument("prompt")
    g.add_argument("--duration", type=float, default=180.0, help="seconds, 30-600 (default 180)")
    g.add_argument("--engine", default="procedural", help="procedural or musicgen")
    g.add_argument("--model")
    g.add_argument("--seed", type=int)
    g.add_argument("--section", type=_section, action="append", default=[], metavar="START:PROMPT")
    g.add_argument("--bpm", type=int)
    g.add_argument("--key")
    g.add_argument("--genre")
    g.add_argument("--mood")
    g.add_argument("--format", action="append", dest="formats", metavar=f"{{{','.join(FORMATS)}}}")
    g.add_argument("--loudness", type=float, default=-14.0, help="target LUFS (default -14)")
    g.add_argument("--true-peak", type=float, default=-1.0, help="ceiling dBTP (default -1)")
    g.add_argument("--user", default="anonymous")
    g.add_argument("--request-id")
    g.add_argument("--wait", action="store_true", help="show progress and download when done")
    g.add_argument("--output", default="out", help="download folder with --wait (default ./out)")
    g.add_argument("--json", action="store_true")

    s = sub.add_parser("status", help="progress and result of a song")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    c = sub.add_parser("cancel", help="cancel a song")
    c.add_argument("id")
    ls = sub.add_parser("list", help="recent songs")
    ls.add_argument("--user")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    d = sub.add_parser("download", help="download a finished song")
    d.add_argument("id")
    d.add_argument("--output", required=True)
    v = sub.add_parser("verify", help="look for the longsong watermark in an audio file")
    v.add_argument("file")
    v.add_argument("--json", action="store_true")
    return p


def _request(a: argparse.Namespace) -> SongRequest:
    fields = dict(prompt=a.prompt, duration_s=a.duration, engine=a.engine, model=a.model, seed=a.seed,
                  sections=a.section, bpm=a.bpm, key=a.key, genre=a.genre, mood=a.mood,
                  loudness_lufs=a.loudness, true_peak_dbtp=a.true_peak, user_id=a.user)
    if a.formats:
        fields["formats"] = a.formats
    if a.request_id:
        fields["request_id"] = a.request_id
    return SongRequest(**fields)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


async def _generate(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import LongsongClient

    req = _request(a)
    from longsong.request import validate

    validate(req)  # before connecting: bad input never needs a server
    lc = await LongsongClient.connect(a.address, a.namespace, settings=settings)
    handle = await lc.submit(req)
    if not a.json:
        verb = "attached to existing" if handle.attached else "submitted"
        print(f"{verb} song {handle.workflow_id}\nWeb UI: {handle.ui_url}", file=sys.stderr)
    if not a.wait:
        if a.json:
            _print_json({"workflow_id": handle.workflow_id, "status": "running", "ui_url": handle.ui_url})
        return 0
    result = await _wait_with_bar(lc, handle.workflow_id, quiet=a.json)
    files = await lc.download(handle.workflow_id, a.output)
    summary = {
        "workflow_id": handle.workflow_id,
        "status": result.status,
        "duration_s": result.duration_s,
        "seed": result.seed,
        "engine": result.engine,
        "model": result.model,
        "loudness_lufs": result.loudness_lufs,
        "true_peak_dbtp": result.true_peak_dbtp,
        "watermark_id": result.watermark_id,
        "files": {name: str(path.resolve()) for name, path in files.items()},
        "timings": result.timings,
        "ui_url": handle.ui_url,
    }
    if a.json:
        _print_json(summary)
    else:
        print(f"done: {result.duration_s:.1f} s, {result.loudness_lufs:.1f} LUFS, "
              f"{result.true_peak_dbtp:.1f} dBTP, engine {result.engine} ({result.model}), seed {result.seed}")
        for name, path in summary["files"].items():
            print(f"  {name:9s} {path}")
    return 0


async def _wait_with_bar(lc, workflow_id: str, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return await lc.wait(workflow_id)
    columns = [TextColumn("{task.description:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("segments {task.fields[seg]}"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("queued", total=100, seg="0/?", eta="?")

        def update(p) -> None:
            eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
            bar.update(task, description=p.stage, completed=p.percent, seg=f"{p.segments_done}/{p.segments_total}",
                       eta=eta)

        result = await lc.wait(workflow_id, on_progress=update)
        bar.update(task, description="done", completed=100, eta="0s")
    return result


async def _status(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import LongsongClient

    lc = await LongsongClient.connect(a.address, a.namespace, settings=settings)
    status = await lc.status(a.id)
    p = await lc.progress(a.id)
    out = {"workflow_id": a.id, "status": status, **asdict(p)}
    if status == "completed":
        out["result"] = asdict(await lc.result(a.id))
    if a.json:
        _print_json(out)
    else:
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s else ""
        print(f"{a.id}: {status}, stage {p.stage}, segments {p.segments_done}/{p.segments_total}, "
              f"{p.percent}%, elapsed {p.elapsed_s:.0f} s{eta}")
    return 0


async def _cancel(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import LongsongClient

    lc = await LongsongClient.connect(a.address, a.namespace, settings=settings)
    await lc.cancel(a.id)
    print(f"cancellation requested for {a.id}")
    return 0


async def _list(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import LongsongClient

    lc = await LongsongClient.connect(a.address, a.namespace, settings=settings)
    songs = await lc.list(user_id=a.user, limit=a.limit)
    if a.json:
        _print_json([asdict(s) for s in songs])
        return 0
    for s in songs:
        started = s.started_at.strftime("%Y-%m-%d %H:%M") if s.started_at else "?"
        print(f"{s.workflow_id:34s} {s.status:10s} {s.stage:10s} {started} {s.user_id:12s} {s.prompt[:40]}")
    return 0


async def _download(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import LongsongClient

    lc = await LongsongClient.connect(a.address, a.namespace, settings=settings)
    for name, path in (await lc.download(a.id, a.output)).items():
        print(f"{name:9s} {path}")
    return 0


def _verify(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.audio.encode import decode
    from longsong.audio.watermark import detect

    if not Path(a.file).is_file():
        raise CliError(f"file: {a.file} does not exist")
    audio, sr = decode(a.file)
    d = detect(audio, sr, settings.watermark_secret)
    if a.json:
        _print_json({"file": a.file, "found": d.found, "watermark_id": d.track_id, "confidence": d.confidence})
    elif d.found:
        print(f"found: watermark id {d.track_id} (0x{d.track_id:08x}), confidence {d.confidence:.2f}")
    else:
        print(f"not found (confidence {d.confidence:.2f})")
    return 0 if d.found else 1


def _dev(a: argparse.Namespace, settings: Settings) -> int:
    from longsong import devstack

    if a.action == "up":
        devstack.up(settings)
        print(f"local stack up: Temporal at {devstack.address(settings)}, Web UI {settings.web_ui}, "
              f"data in {settings.home}")
    elif a.action == "down":
        stopped = devstack.down(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    for svc in devstack.services(settings) if a.action != "down" else []:
        state = f"running (pid {svc.pid})" if svc.alive else "stopped"
        print(f"  {svc.name:11s} {state:22s} log {svc.log}")
    return 0


COMMANDS = {"generate": _generate, "status": _status, "cancel": _cancel, "list": _list, "download": _download}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    exit_process(run(args))


def run(args: argparse.Namespace) -> int:
    from longsong.devstack import DevStackError
    from longsong.storage import StorageError

    try:
        settings = Settings.from_env()
        if args.command == "dev":
            return _dev(args, settings)
        if args.command == "verify":
            return _verify(args, settings)
        return asyncio.run(COMMANDS[args.command](args, settings))
    except (InvalidRequest, CliError, SettingsError) as e:
        return _fail(str(e), getattr(e, "code", EXIT_BAD_INPUT))
    except ConnectionError as e:
        return _fail(str(e), EXIT_UNREACHABLE)
    except (DevStackError, StorageError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except Exception as e:  # song failures, missing workflows, ffmpeg problems: one line, not a traceback
        from longsong.client import SongFailed

        code = EXIT_FAILED if isinstance(e, SongFailed) else 1
        return _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "), code)


def _fail(message: str, code: int) -> int:
    print(f"longsong: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
