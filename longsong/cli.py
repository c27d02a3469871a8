"""`longsong` command line: dev stack, generate, extend, regenerate, status, cancel, list, download, verify,
serve, keys.

Exit codes (the same for every command):
  0    success
  1    watermark not found (`verify`); also an unexpected error (one line naming it)
  2    bad input or usage: a request field, an option, a conflicting request_id, a file that is not audio
  3    a server is unreachable: Temporal, or the object store
  4    the song failed or was cancelled (`generate --wait`, `status --wait`, `download`), or `cancel` of a
       song that already completed, failed or was cancelled
  5    no such song: unknown workflow id (`status`, `cancel`, `download`)
  130  interrupted (Ctrl-C); a song being waited for keeps running
Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import asdict
from datetime import timedelta

from longsong import __version__
from longsong.cli_local import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_SONG,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CliError,
    dev_command,
    print_json,
    verify_command,
)
from longsong.cli_service import add_commands, keys_command, serve_command
from longsong.cli_progress import activity_line, wait_with_bar
from longsong.process import exit_process
from longsong.request import FORMATS, InvalidRequest, Section, SongRequest
from longsong.settings import Settings, SettingsError

class Parser(argparse.ArgumentParser):
    """Usage errors as one line with a --help hint (exit 2), not argparse's usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"longsong: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _section(i: int, text: str) -> Section:
    start, sep, prompt = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return Section(float(start), prompt.strip())
    except ValueError:
        raise InvalidRequest(f"sections[{i}]", f"must be START:PROMPT with START in seconds (e.g. 30:chorus), "
                                               f"got {text!r}") from None


def _number(text: str | float | None) -> float | int | str | None:
    """An option's number as typed ('120' -> 120, '120.5' -> 120.5); text that is no number stays text, so
    validation names the field and its range instead of argparse naming the option."""
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _connection_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--address", default=default,
                   help="Temporal address (default: TEMPORAL_ADDRESS / profile / localhost:$LONGSONG_DEV_PORT)")
    p.add_argument("--namespace", default=default, help="Temporal namespace (default: TEMPORAL_NAMESPACE or 'default')")


def _follow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="show progress and download when done (Ctrl-C detaches)")
    p.add_argument("--output", default="out", help="download folder with --wait (default ./out)")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="longsong", description="Full-length AI songs on Temporal.",
               epilog="exit codes: 0 ok, 1 watermark not found, 2 bad input or usage, 3 server unreachable, "
                      "4 song failed or cancelled, 5 no such song, 130 interrupted")
    p.add_argument("--version", action="version", version=f"longsong {__version__}")
    _connection_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        _connection_options(cmd, argparse.SUPPRESS)  # also after the command; unset there keeps the global one
        return cmd

    dev = command("dev", "local stack: Temporal dev server + both workers")
    dev.add_argument("action", choices=["up", "down", "status"])

    g = command("generate", "submit a song")
    g.add_argument("prompt")
    g.add_argument("--duration", default=180.0, help="seconds, 30-600 (default 180)")
    g.add_argument("--engine", default="procedural", help="procedural or musicgen")
    g.add_argument("--model")
    g.add_argument("--seed")
    g.add_argument("--section", action="append", default=[], metavar="START:PROMPT")
    g.add_argument("--bpm")
    g.add_argument("--key")
    g.add_argument("--genre")
    g.add_argument("--mood")
    g.add_argument("--format", action="append", dest="formats", metavar=f"{{{','.join(FORMATS)}}}")
    g.add_argument("--loudness", default=-14.0, help="target LUFS (default -14)")
    g.add_argument("--true-peak", default=-1.0, help="ceiling dBTP (default -1)")
    g.add_argument("--user", default="anonymous")
    g.add_argument("--request-id", help="the song's id: the same request again attaches to it; a different "
                                        "request under a used id is an error")
    g.add_argument("--max-rerolls", default=2, help="quality gate: re-rolls of a failing window, 0-5 (0: no gate)")
    _follow_options(g)

    e = command("extend", "a new song continuing a finished one (its windows reused as they are)")
    e.add_argument("id", help="the finished song to continue")
    e.add_argument("--duration", required=True, help="seconds to add after the continuation point")
    e.add_argument("--from", dest="from_s", help="continue from the last window end at or before this time (s)")
    e.add_argument("--section", action="append", default=[], metavar="START:PROMPT",
                   help="START in seconds from the continuation point")
    e.add_argument("--outro", action="store_true", help="end the extension with an outro")
    r = command("regenerate", "a new song keeping a finished one's first windows and making the rest anew")
    r.add_argument("id", help="the finished song to redo")
    r.add_argument("--from-window", required=True, help="first window made anew (0-based; 1 keeps window 0)")
    r.add_argument("--section", action="append", default=None, metavar="START:PROMPT",
                   help="sections of the whole song (default: the parent's)")
    for cmd in (e, r):
        cmd.add_argument("--seed")
        cmd.add_argument("--user", default="anonymous")
        cmd.add_argument("--request-id")
        cmd.add_argument("--max-rerolls")
        _follow_options(cmd)

    s = command("status", "progress and result of a song")
    s.add_argument("id")
    s.add_argument("--wait", action="store_true", help="follow the song until it ends (Ctrl-C detaches)")
    s.add_argument("--links", action="store_true", help="download links of a completed song's files (minted now)")
    s.add_argument("--expiry", type=float, metavar="SECONDS",
                   help="lifetime of --links on S3 (default LONGSONG_LINK_EXPIRY, at most 604800 = 7 days)")
    s.add_argument("--json", action="store_true")
    c = command("cancel", "cancel a running song")
    c.add_argument("id")
    ls = command("list", "recent songs")
    ls.add_argument("--user")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")
    d = command("download", "download a song's files (waits while it runs)")
    d.add_argument("id")
    d.add_argument("--output", required=True)
    v = command("verify", "look for the longsong watermark and content credentials in an audio file")
    v.add_argument("file")
    v.add_argument("--json", action="store_true")
    add_commands(command)
    return p


def _request(a: argparse.Namespace) -> SongRequest:
    fields = dict(prompt=a.prompt, duration_s=_number(a.duration), engine=a.engine, model=a.model,
                  seed=_number(a.seed), sections=[_section(i, t) for i, t in enumerate(a.section)],
                  bpm=_number(a.bpm), key=a.key, genre=a.genre, mood=a.mood, loudness_lufs=_number(a.loudness),
                  true_peak_dbtp=_number(a.true_peak), user_id=a.user, max_rerolls=_number(a.max_rerolls))
    if a.formats:
        fields["formats"] = a.formats
    if a.request_id is not None:
        fields["request_id"] = a.request_id
    return SongRequest(**fields)


async def _client(a: argparse.Namespace, settings: Settings):
    from longsong.client import LongsongClient

    return await LongsongClient.connect(a.address, a.namespace, settings=settings)


async def _generate(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.request import validate

    req = _request(a)
    validate(req)  # before connecting: bad input never needs a server
    lc = await _client(a, settings)
    return await _follow(a, lc, await lc.submit(req))


async def _derived(a: argparse.Namespace, settings: Settings) -> int:
    """extend / regenerate: the parent is checked by the client before anything starts."""
    options = {"seed": _number(a.seed), "request_id": a.request_id, "max_rerolls": _number(a.max_rerolls)}
    if a.section is not None:
        options["sections"] = [_section(i, t) for i, t in enumerate(a.section)]
    lc = await _client(a, settings)
    if a.command == "extend":
        handle = await lc.extend(a.id, _number(a.duration), user_id=a.user, from_s=_number(a.from_s),
                                 outro=a.outro, **options)
    else:
        handle = await lc.regenerate(a.id, _number(a.from_window), user_id=a.user, **options)
    return await _follow(a, lc, handle)


async def _follow(a: argparse.Namespace, lc, handle) -> int:
    """Say what was started; with --wait follow it to the end and download the files."""
    a.song_id = handle.workflow_id  # from here on Ctrl-C detaches
    if not a.json:
        verb = f"attached to existing ({handle.status})" if handle.attached else "submitted"
        print(f"{verb} song {handle.workflow_id}\nWeb UI: {handle.ui_url}", file=sys.stderr)
    if not a.wait:
        if a.json:
            print_json({"workflow_id": handle.workflow_id, "status": handle.status, "attached": handle.attached,
                         "ui_url": handle.ui_url})
        return EXIT_OK
    result = await wait_with_bar(lc, handle.workflow_id, quiet=a.json)
    files = await lc.download(handle.workflow_id, a.output)
    summary = {
        "workflow_id": handle.workflow_id,
        "status": result.status,
        "attached": handle.attached,
        "duration_s": result.duration_s,
        "seed": result.seed,
        "engine": result.engine,
        "model": result.model,
        "loudness_lufs": result.loudness_lufs,
        "true_peak_dbtp": result.true_peak_dbtp,
        "watermark_id": result.watermark_id,
        "quality": result.quality,
        "parent_id": result.parent_id,
        "files": {name: str(path.resolve()) for name, path in files.items()},
        "timings": result.timings,
        "ui_url": handle.ui_url,
    }
    if a.json:
        print_json(summary)
    else:
        print(f"done: {result.duration_s:.1f} s, {result.loudness_lufs:.1f} LUFS, "
              f"{result.true_peak_dbtp:.1f} dBTP, engine {result.engine} ({result.model}), seed {result.seed}")
        rerolls = sum(w.rerolls for w in result.windows if not w.inherited)
        flagged = [f"{w.index + 1}/{len(result.windows)}" for w in result.windows if not w.passed]
        print(f"quality gate: {result.quality}" + (f", {rerolls} re-roll(s)" if result.quality != "off" else "")
              + (f", flagged: window {', '.join(flagged)}" if flagged else "")
              + (f"; continues song {result.parent_id}" if result.parent_id else ""))
        for name, path in summary["files"].items():
            print(f"  {name:9s} {path}")
    return EXIT_OK


async def _status(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import SongFailed, check_expiry

    expiry = None
    if a.expiry is not None:
        try:
            expiry = check_expiry(timedelta(seconds=a.expiry))
        except (OverflowError, ValueError):  # inf, nan
            raise InvalidRequest("expiry", f"must be between 1 second and 7 days, got {a.expiry:g} s") from None
    lc = await _client(a, settings)
    status = await lc.status(a.id)
    code = EXIT_OK
    if a.wait and status == "running":
        a.song_id = a.id
        try:
            await wait_with_bar(lc, a.id, quiet=a.json)
        except SongFailed:
            pass  # reported below
        status = await lc.status(a.id)
    p = await lc.progress(a.id)
    out = {"workflow_id": a.id, "status": status, **asdict(p)}
    if status == "completed":
        out["result"] = asdict(await lc.result(a.id))
    elif status != "running":
        try:
            await lc.result(a.id)
        except SongFailed as e:
            out["failure"] = str(e)
        if a.wait:
            code = EXIT_FAILED
    if a.links:
        out["links"] = await lc.links(a.id, expiry) if status == "completed" else {}
    if a.json:
        print_json(out)
    else:
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s else ""
        note = activity_line(p)
        print(f"{a.id}: {status}, stage {p.stage}, segments {p.segments_done}/{p.segments_total}, "
              f"{p.percent}%, elapsed {p.elapsed_s:.0f} s{eta}" + (f"; {note}" if note else ""))
        for name, link in out.get("links", {}).items():
            print(f"  {name:9s} {link}")
        if a.links and status != "completed":
            print(f"  (no links: the song is {status})")
    if code == EXIT_FAILED:
        _fail(out.get("failure") or f"song {a.id} {status}", code)
    return code


async def _cancel(a: argparse.Namespace, settings: Settings) -> int:
    lc = await _client(a, settings)
    await lc.cancel(a.id)
    print(f"cancellation requested for {a.id}")
    return EXIT_OK


async def _list(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.client import check_user_id

    if a.user is not None:
        check_user_id(a.user)  # before connecting, like a request
    lc = await _client(a, settings)
    songs = await lc.list(user_id=a.user, limit=a.limit)
    if a.json:
        print_json([asdict(s) for s in songs])
        return EXIT_OK
    for s in songs:
        started = s.started_at.strftime("%Y-%m-%d %H:%M") if s.started_at else "?"
        print(f"{s.workflow_id:34s} {s.status:10s} {s.stage:10s} {started} {s.user_id:12s} {s.prompt[:40]}")
    return EXIT_OK


async def _download(a: argparse.Namespace, settings: Settings) -> int:
    lc = await _client(a, settings)
    await lc.status(a.id)  # an unknown id fails now instead of waiting
    a.song_id = a.id
    for name, path in (await lc.download(a.id, a.output)).items():
        print(f"{name:9s} {path}")
    return EXIT_OK


COMMANDS = {"generate": _generate, "extend": _derived, "regenerate": _derived, "status": _status, "cancel": _cancel,
            "list": _list, "download": _download}


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        code = run(args)
    except KeyboardInterrupt:
        code = _fail("interrupted", EXIT_INTERRUPTED)
    exit_process(code)


def run(args: argparse.Namespace) -> int:
    from longsong.client import RequestConflict, SongClosed, SongFailed, SongNotFinished, SongNotFound
    from longsong.devstack import DevStackError
    from longsong.storage import StorageError, StorageUnavailable

    def detach(signum, frame) -> None:
        """Ctrl-C: one line and exit 130 at once, whatever the event loop is doing (a cancelled wait could
        otherwise be swallowed on its way out of asyncio.run)."""
        song = getattr(args, "song_id", None)
        if song is None:
            _fail("interrupted", EXIT_INTERRUPTED)
        else:
            print(f"detached; the song keeps running: longsong status {song} --wait", file=sys.stderr)
        exit_process(EXIT_INTERRUPTED)

    if args.command in COMMANDS:
        signal.signal(signal.SIGINT, detach)
    try:
        settings = Settings.from_env()
        if args.command == "dev":
            return dev_command(args, settings)
        if args.command == "verify":
            return verify_command(args, settings)
        if args.command in ("serve", "keys"):
            return (serve_command if args.command == "serve" else keys_command)(args, settings)
        return asyncio.run(COMMANDS[args.command](args, settings))
    except KeyboardInterrupt:
        song = getattr(args, "song_id", None)
        if song is None:
            return _fail("interrupted", EXIT_INTERRUPTED)
        print(f"detached; the song keeps running: longsong status {song} --wait", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RequestConflict, InvalidRequest, CliError, SettingsError) as e:
        return _fail(str(e), getattr(e, "code", EXIT_BAD_INPUT))
    except SongNotFound as e:
        return _fail(str(e), EXIT_NO_SONG)
    except (SongFailed, SongClosed, SongNotFinished) as e:
        return _fail(str(e), EXIT_FAILED)
    except (ConnectionError, StorageUnavailable) as e:
        return _fail(str(e), EXIT_UNREACHABLE)
    except (DevStackError, StorageError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except Exception as e:  # anything else (ffmpeg problems, server errors): one line, not a traceback
        text = " ".join(str(e).split())
        return _fail(f"{type(e).__name__}: {text}" if text else type(e).__name__, EXIT_ERROR)


def _fail(message: str, code: int) -> int:
    print(f"longsong: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
