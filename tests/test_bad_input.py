"""Bad requests, both ways in: the Python client (against a real dev server) and the `longsong` CLI.

Every case must come back as one line that starts with the field's name and names the allowed values;
nothing may start (no workflow with that id, nothing on the task queue, nothing in storage), and the
CLI must exit 2 before it tries to connect (a closed port: trying would exit 3).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from longsong.client import LongsongClient
from longsong.devstack import free_port
from longsong.request import InvalidRequest, Section, SongRequest
from longsong.settings import Settings
from longsong.storage import FileStorage

IDS = "[A-Za-z0-9_-]{1,64}"
FORMATS = "wav, flac, mp3, opus"
ANSI = "\x1b[31mred\x1b[0m"
TAG = uuid.uuid4().hex[:8]  # bad request_ids are unique to this run, so "no such workflow" means something

# (name, fields of the request, field named by the error, text of the allowed values in the message)
CLIENT_CASES = [
    ("prompt-none", {"prompt": None}, "prompt", "1-2000"),
    ("prompt-int", {"prompt": 123}, "prompt", "1-2000"),
    ("prompt-empty", {"prompt": ""}, "prompt", "1-2000"),
    ("prompt-blank", {"prompt": " \n\t "}, "prompt", "1-2000"),
    ("prompt-2001", {"prompt": "x" * 2001}, "prompt", "1-2000"),
    ("prompt-nul", {"prompt": "warm\x00house"}, "prompt", "(U+0000 at position 4); tab and newline are allowed"),
    ("prompt-bel", {"prompt": "x\x07"}, "prompt", "U+0007"),
    ("prompt-del", {"prompt": "x\x7f"}, "prompt", "U+007F"),
    ("prompt-c1-nel", {"prompt": "x\x85y"}, "prompt", "U+0085"),
    ("prompt-c1-csi", {"prompt": "x\x9b31m"}, "prompt", "U+009B"),
    ("prompt-cr", {"prompt": "a\r\nb"}, "prompt", "U+000D"),
    ("prompt-ansi", {"prompt": "a" + ANSI}, "prompt", "ANSI escape sequences (ESC[ at position 1)"),
    ("prompt-esc", {"prompt": "\x1b]0;title\x07"}, "prompt", "U+001B"),
    ("prompt-zero-width", {"prompt": "\u200b"}, "prompt", "1-2000 visible characters"),
    ("prompt-invisible", {"prompt": "\ufeff \u200d\u2060\u00ad"}, "prompt", "1-2000 visible characters"),
    ("prompt-surrogate", {"prompt": "a\udcffb"}, "prompt", "valid Unicode"),
    ("duration-low", {"duration_s": 29}, "duration_s", ">= 30 and <= 600"),
    ("duration-high", {"duration_s": 601}, "duration_s", ">= 30 and <= 600"),
    ("duration-str", {"duration_s": "180"}, "duration_s", ">= 30 and <= 600"),
    ("duration-nan", {"duration_s": math.nan}, "duration_s", ">= 30 and <= 600"),
    ("duration-inf", {"duration_s": math.inf}, "duration_s", ">= 30 and <= 600"),
    ("duration-bool", {"duration_s": True}, "duration_s", ">= 30 and <= 600"),
    ("duration-none", {"duration_s": None}, "duration_s", ">= 30 and <= 600"),
    ("genre-int", {"genre": 123}, "genre", "1-200"),
    ("genre-long", {"genre": "x" * 201}, "genre", "1-200"),
    ("genre-newline", {"genre": "hip\nhop"}, "genre", "no tab or newline"),
    ("genre-nul", {"genre": "\x00"}, "genre", "U+0000"),
    ("genre-invisible", {"genre": "\u200b"}, "genre", "1-200 visible characters"),
    ("mood-ansi", {"mood": ANSI}, "mood", "ANSI escape"),
    ("mood-tab", {"mood": "dark\tmoody"}, "mood", "U+0009"),
    ("mood-int", {"mood": 5}, "mood", "1-200"),
    ("bpm-low", {"bpm": 39}, "bpm", ">= 40 and <= 240"),
    ("bpm-high", {"bpm": 241}, "bpm", ">= 40 and <= 240"),
    ("bpm-float", {"bpm": 120.5}, "bpm", "an integer >= 40"),
    ("bpm-bool", {"bpm": True}, "bpm", "an integer >= 40"),
    ("bpm-str", {"bpm": "120"}, "bpm", "an integer >= 40"),
    ("key-unknown", {"key": "H minor"}, "key", "A-G"),
    ("key-blank", {"key": "  "}, "key", "A-G"),
    ("key-int", {"key": 123}, "key", "A-G"),
    ("key-list", {"key": ["A"]}, "key", "A-G"),
    ("key-nul", {"key": "A\x00minor"}, "key", "A-G"),
    ("seed-negative", {"seed": -1}, "seed", "an integer >= 0 and <= 9223372036854775807, got -1"),
    ("seed-2-63", {"seed": 2**63}, "seed", "<= 9223372036854775807"),
    ("seed-float", {"seed": 1.0}, "seed", "an integer >= 0"),
    ("seed-str", {"seed": "1"}, "seed", "an integer >= 0"),
    ("engine-none", {"engine": None}, "engine", "procedural, musicgen"),
    ("engine-unknown", {"engine": "suno"}, "engine", "procedural, musicgen"),
    ("engine-empty", {"engine": ""}, "engine", "procedural, musicgen"),
    ("engine-list", {"engine": ["procedural"]}, "engine", "procedural, musicgen"),
    ("model-empty", {"model": ""}, "model", "1-500"),
    ("model-int", {"model": 5}, "model", "1-500"),
    ("model-long", {"model": "m" * 501}, "model", "1-500"),
    ("model-nul", {"model": "facebook/\x00small"}, "model", "U+0000"),
    ("model-invisible", {"model": "\ufeff"}, "model", "1-500 visible characters"),
    ("segment-low", {"segment_s": 9}, "segment_s", ">= 10 and <= 30"),
    ("segment-high", {"segment_s": 31}, "segment_s", ">= 10 and <= 30"),
    ("overlap-low", {"overlap_s": 0.5}, "overlap_s", ">= 1 and <= 25"),
    ("overlap-high", {"overlap_s": 26}, "overlap_s", ">= 1 and <= 25"),
    ("crossfade-low", {"crossfade_s": 0.05}, "crossfade_s", ">= 0.1 and <= 12"),
    ("crossfade-high", {"crossfade_s": 13}, "crossfade_s", ">= 0.1 and <= 12"),
    ("temperature-zero", {"temperature": 0}, "temperature", "> 0 and <= 10"),
    ("temperature-nan", {"temperature": math.nan}, "temperature", "> 0 and <= 10"),
    ("top-k-negative", {"top_k": -1}, "top_k", ">= 0 and <= 2048"),
    ("top-k-str", {"top_k": "5"}, "top_k", "an integer >= 0 and <= 2048"),
    ("top-k-float", {"top_k": 5.0}, "top_k", "an integer >= 0 and <= 2048"),
    ("top-p-high", {"top_p": 1.5}, "top_p", ">= 0 and <= 1"),
    ("cfg-low", {"cfg": 0.5}, "cfg", ">= 1 and <= 20"),
    ("cfg-inf", {"cfg": math.inf}, "cfg", ">= 1 and <= 20"),
    ("formats-str", {"formats": "mp3"}, "formats", FORMATS),
    ("formats-empty", {"formats": []}, "formats", FORMATS),
    ("formats-none", {"formats": None}, "formats", FORMATS),
    ("formats-int", {"formats": [1]}, "formats", FORMATS),
    ("formats-unknown", {"formats": ["mp3", "aac"]}, "formats", FORMATS),
    ("formats-upper", {"formats": ["MP3"]}, "formats", FORMATS),
    ("loudness-high", {"loudness_lufs": -7}, "loudness_lufs", ">= -23 and <= -8"),
    ("loudness-low", {"loudness_lufs": -24}, "loudness_lufs", ">= -23 and <= -8"),
    ("loudness-nan", {"loudness_lufs": math.nan}, "loudness_lufs", ">= -23 and <= -8"),
    ("true-peak-high", {"true_peak_dbtp": 1}, "true_peak_dbtp", ">= -9 and <= 0"),
    ("true-peak-inf", {"true_peak_dbtp": -math.inf}, "true_peak_dbtp", ">= -9 and <= 0"),
    ("user-none", {"user_id": None}, "user_id", IDS),
    ("user-empty", {"user_id": ""}, "user_id", IDS),
    ("user-space", {"user_id": "a b"}, "user_id", IDS),
    ("user-newline", {"user_id": "tester\n"}, "user_id", IDS),
    ("user-quote", {"user_id": 'te"ster'}, "user_id", IDS),
    ("user-long", {"user_id": "u" * 65}, "user_id", IDS),
    ("request-id-int", {"request_id": 5}, "request_id", IDS),
    ("request-id-none", {"request_id": None}, "request_id", IDS),
    ("request-id-empty", {"request_id": ""}, "request_id", IDS),
    ("request-id-newline", {"request_id": f"{TAG}-nl\n"}, "request_id", IDS),
    ("request-id-slash", {"request_id": f"{TAG}/x"}, "request_id", IDS),
    ("request-id-quote", {"request_id": f"{TAG}'x"}, "request_id", IDS),
    ("request-id-long", {"request_id": TAG + "r" * 60}, "request_id", IDS),
    ("sections-none", {"sections": None}, "sections", "list of {start_s, prompt}"),
    ("sections-str", {"sections": "intro"}, "sections", "list of {start_s, prompt}"),
    ("sections-33", {"sections": [Section(i, "x") for i in range(33)]}, "sections", "at most 32"),
    ("section-str", {"sections": ["intro"]}, "sections[0]", "{start_s, prompt}"),
    ("section-tuple", {"sections": [("0", "x")]}, "sections[0]", "{start_s, prompt}"),
    ("section-dict-missing", {"sections": [{"start": 0}]}, "sections[0]", "{start_s, prompt}"),
    ("section-dict-extra", {"sections": [{"start_s": 0, "prompt": "a", "bars": 4}]}, "sections[0]",
     "{start_s, prompt}"),
    ("section-not-at-0", {"sections": [Section(5, "intro")]}, "sections[0].start_s", "start at 0"),
    ("section-equal", {"sections": [Section(0, "a"), Section(0, "b")]}, "sections[1].start_s", "ascending"),
    ("section-order", {"sections": [Section(0, "a"), Section(40, "b"), Section(20, "c")]}, "sections[2].start_s",
     "ascending"),
    ("section-past-end", {"sections": [Section(0, "a"), Section(90, "b")]}, "sections[1].start_s",
     ">= 0 and <= 60"),
    ("section-at-end", {"sections": [Section(0, "a"), Section(60, "b")]}, "sections[1].start_s",
     "< duration_s (60)"),
    ("section-start-str", {"sections": [Section("0", "a")]}, "sections[0].start_s", ">= 0 and <= 60"),
    ("section-start-nan", {"sections": [Section(math.nan, "a")]}, "sections[0].start_s", ">= 0 and <= 60"),
    ("section-prompt-none", {"sections": [Section(0, None)]}, "sections[0].prompt", "1-500"),
    ("section-prompt-blank", {"sections": [Section(0, " ")]}, "sections[0].prompt", "1-500"),
    ("section-prompt-long", {"sections": [Section(0, "x" * 501)]}, "sections[0].prompt", "1-500"),
    ("section-prompt-ansi", {"sections": [Section(0, "in\x1b[2Jtro")]}, "sections[0].prompt", "ANSI escape"),
    ("section-prompt-invisible", {"sections": [Section(0, "\u200c")]}, "sections[0].prompt",
     "1-500 visible characters"),
]


def bad_request(i: int, fields: dict) -> SongRequest:
    return SongRequest(**{"prompt": "warm house groove", "duration_s": 60, "user_id": "tester",
                          "request_id": f"{TAG}-bad-{i}", **fields})


def test_the_tables_are_big_enough():
    assert len(CLIENT_CASES) >= 60 and len({c[0] for c in CLIENT_CASES}) == len(CLIENT_CASES)
    assert len(CLI_CASES) >= 40 and len({c.id for c in CLI_CASES}) == len(CLI_CASES)


async def _lookup(client: Client, workflow_id: str) -> str:
    try:
        await client.get_workflow_handle(workflow_id).describe()
        return "exists"
    except RPCError as e:
        return RPCStatusCode(e.status).name


@pytest.fixture(scope="module")
def client_outcomes(temporal_address, tmp_path_factory):
    """Submit every bad case in one event loop; then make sure the checks can see a song that did start."""
    tmp = tmp_path_factory.mktemp("bad-input")
    settings = Settings(home=tmp / "home", gpu_queue=f"bad-gpu-{TAG}", cpu_queue=f"bad-cpu-{TAG}")
    control_settings = Settings(home=tmp / "home", gpu_queue=f"ctl-gpu-{TAG}", cpu_queue=f"ctl-cpu-{TAG}")
    storage = FileStorage(tmp / "objects")

    async def main():
        client = await Client.connect(temporal_address)
        lc = LongsongClient(client, settings)
        outcomes = {}
        for i, (name, fields, _, _) in enumerate(CLIENT_CASES):
            req = bad_request(i, fields)
            error = None
            try:
                await lc.submit(req)
            except Exception as e:  # noqa: BLE001 - the test looks at what it was
                error = e
            ids = {req.request_id, req.request_id.strip()} if isinstance(req.request_id, str) else set()
            outcomes[name] = (error, {wid: await _lookup(client, wid) for wid in sorted(ids)})
        # Control: a good request does start, and both checks see it (then it is terminated: no worker runs it).
        good = bad_request(len(CLIENT_CASES), {})
        await LongsongClient(client, control_settings).submit(good)
        control_lookup = await _lookup(client, good.request_id)
        deadline = time.monotonic() + 10
        while not [w async for w in client.list_workflows(f"TaskQueue = '{control_settings.cpu_queue}'")]:
            assert time.monotonic() < deadline, "the control song never showed up in the visibility list"
            await asyncio.sleep(0.1)
        on_queue = [w.id async for w in client.list_workflows(f"TaskQueue = '{settings.cpu_queue}'")]
        await client.get_workflow_handle(good.request_id).terminate("bad-input test control")
        return outcomes, control_lookup, on_queue

    outcomes, control_lookup, on_queue = asyncio.run(main())
    return outcomes, control_lookup, on_queue, storage


@pytest.mark.parametrize("name, fields, field, allowed", CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_rejects_bad_request(client_outcomes, name, fields, field, allowed):
    error, lookups = client_outcomes[0][name]
    assert isinstance(error, InvalidRequest), f"{name}: {type(error).__name__}: {error}"
    msg = str(error)
    assert error.field == field and msg.startswith(field + ": "), msg
    assert allowed in msg and "\n" not in msg and "\r" not in msg, msg
    assert all(status in ("NOT_FOUND", "INVALID_ARGUMENT") for status in lookups.values()), lookups


def test_client_started_nothing(client_outcomes):
    _, control_lookup, on_queue, storage = client_outcomes
    assert control_lookup == "exists"  # the lookup can tell a started song
    assert on_queue == []
    assert [p for p in storage.root.rglob("*") if p.is_file()] == []


# The CLI: (name, argv after `longsong generate`, field, allowed). argv items may be bytes (not UTF-8).
# A NUL cannot be passed in argv (the client cases cover it).

def cli_case(name, argv, field, allowed):
    return pytest.param(name, argv, field, allowed, id=name)


CLI_CASES = [
    cli_case("duration-low", ["x", "--duration", "29"], "duration_s", ">= 30 and <= 600"),
    cli_case("duration-high", ["x", "--duration", "601"], "duration_s", ">= 30 and <= 600"),
    cli_case("duration-nan", ["x", "--duration", "nan"], "duration_s", ">= 30 and <= 600"),
    cli_case("duration-inf", ["x", "--duration", "inf"], "duration_s", ">= 30 and <= 600"),
    cli_case("duration-minus-inf", ["x", "--duration=-inf"], "duration_s", ">= 30 and <= 600"),
    cli_case("duration-word", ["x", "--duration", "long"], "duration_s", ">= 30 and <= 600"),
    cli_case("bpm-low", ["x", "--bpm", "39"], "bpm", ">= 40 and <= 240"),
    cli_case("bpm-high", ["x", "--bpm", "241"], "bpm", ">= 40 and <= 240"),
    cli_case("bpm-float", ["x", "--bpm", "120.5"], "bpm", ">= 40 and <= 240"),
    cli_case("seed-negative", ["x", "--seed=-1"], "seed", "an integer >= 0 and <= 9223372036854775807, got -1"),
    cli_case("seed-2-63", ["x", "--seed", str(2**63)], "seed", "<= 9223372036854775807"),
    cli_case("seed-word", ["x", "--seed", "abc"], "seed", ">= 0"),
    cli_case("loudness-high", ["x", "--loudness=-7.9"], "loudness_lufs", ">= -23 and <= -8"),
    cli_case("loudness-low", ["x", "--loudness=-23.5"], "loudness_lufs", ">= -23 and <= -8"),
    cli_case("loudness-nan", ["x", "--loudness", "nan"], "loudness_lufs", ">= -23 and <= -8"),
    cli_case("true-peak-high", ["x", "--true-peak", "1"], "true_peak_dbtp", ">= -9 and <= 0"),
    cli_case("true-peak-low", ["x", "--true-peak=-10"], "true_peak_dbtp", ">= -9 and <= 0"),
    cli_case("true-peak-inf", ["x", "--true-peak", "inf"], "true_peak_dbtp", ">= -9 and <= 0"),
    cli_case("key-unknown", ["x", "--key", "H minor"], "key", "A-G"),
    cli_case("key-blank", ["x", "--key", " "], "key", "A-G"),
    cli_case("key-trailing", ["x", "--key", "A minor x"], "key", "A-G"),
    cli_case("format-unknown", ["x", "--format", "aac"], "formats", FORMATS),
    cli_case("format-upper", ["x", "--format", "MP3"], "formats", FORMATS),
    cli_case("format-empty", ["x", "--format", "mp3", "--format", ""], "formats", FORMATS),
    cli_case("section-not-at-0", ["x", "--section", "10:late"], "sections[0].start_s", "start at 0"),
    cli_case("section-equal", ["x", "--section", "0:a", "--section", "0:b"], "sections[1].start_s", "ascending"),
    cli_case("section-order", ["x", "--section", "0:a", "--section", "60:b", "--section", "30:c"],
             "sections[2].start_s", "ascending"),
    cli_case("section-past-end", ["x", "--section", "0:a", "--section", "200:b"], "sections[1].start_s",
             ">= 0 and <= 180"),
    cli_case("section-at-end", ["x", "--duration", "60", "--section", "0:a", "--section", "60:b"],
             "sections[1].start_s", "< duration_s (60)"),
    cli_case("section-nan", ["x", "--section", "nan:a"], "sections[0].start_s", ">= 0 and <= 180"),
    cli_case("section-no-prompt", ["x", "--section", "0:"], "sections[0].prompt", "1-500"),
    cli_case("section-ansi", ["x", "--section", "0:in\x1b[2Jtro"], "sections[0].prompt", "ANSI escape"),
    cli_case("section-33", ["x"] + [a for i in range(33) for a in ("--section", f"{i}:x")], "sections",
             "at most 32"),
    cli_case("section-malformed", ["x", "--section", "abc:x"], "sections[0]", "START:PROMPT"),
    cli_case("section-no-colon", ["x", "--section", "intro"], "sections[0]", "START:PROMPT"),
    cli_case("prompt-soh", ["\x01x"], "prompt", "(U+0001 at position 0); tab and newline are allowed"),
    cli_case("prompt-bel", ["x\x07"], "prompt", "U+0007"),
    cli_case("prompt-del", ["x\x7f"], "prompt", "U+007F"),
    cli_case("prompt-c1", ["x\x85"], "prompt", "U+0085"),
    cli_case("prompt-cr", ["a\r\nb"], "prompt", "U+000D"),
    cli_case("prompt-ansi", ["a" + ANSI], "prompt", "ANSI escape sequences (ESC[ at position 1)"),
    cli_case("prompt-osc", ["\x1b]0;title\x07"], "prompt", "U+001B"),
    cli_case("prompt-2001", ["x" * 2001], "prompt", "1-2000"),
    cli_case("prompt-empty", [""], "prompt", "1-2000"),
    cli_case("prompt-blank", ["  \t "], "prompt", "1-2000"),
    cli_case("prompt-zero-width", ["\u200b\ufeff"], "prompt", "1-2000 visible characters"),
    cli_case("prompt-not-utf8", [b"a\xffb"], "prompt", "valid Unicode"),
    cli_case("genre-bel", ["x", "--genre", "\x07"], "genre", "U+0007"),
    cli_case("genre-newline", ["x", "--genre", "hip\nhop"], "genre", "no tab or newline"),
    cli_case("genre-long", ["x", "--genre", "g" * 201], "genre", "1-200"),
    cli_case("mood-ansi", ["x", "--mood", ANSI], "mood", "ANSI escape"),
    cli_case("model-empty", ["x", "--model", ""], "model", "1-500"),
    cli_case("model-invisible", ["x", "--model", "\u2060"], "model", "1-500 visible characters"),
    cli_case("model-tab", ["x", "--model", "a\tb"], "model", "U+0009"),
    cli_case("engine-unknown", ["x", "--engine", "suno"], "engine", "procedural, musicgen"),
    cli_case("engine-empty", ["x", "--engine", ""], "engine", "procedural, musicgen"),
    cli_case("user-quote", ["x", "--user", 'te"ster'], "user_id", IDS),
    cli_case("user-single-quote", ["x", "--user", "te'ster"], "user_id", IDS),
    cli_case("user-newline", ["x", "--user", "tester\n"], "user_id", IDS),
    cli_case("user-space", ["x", "--user", "a b"], "user_id", IDS),
    cli_case("user-empty", ["x", "--user", ""], "user_id", IDS),
    cli_case("request-id-quote", ["x", "--request-id", 'abc"d'], "request_id", IDS),
    cli_case("request-id-single-quote", ["x", "--request-id", "abc'd"], "request_id", IDS),
    cli_case("request-id-newline", ["x", "--request-id", "abc\n"], "request_id", IDS),
    cli_case("request-id-long", ["x", "--request-id", "r" * 65], "request_id", IDS),
    cli_case("request-id-empty", ["x", "--request-id", ""], "request_id", IDS),
]


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory):
    """Run every CLI case (and a good request as control), 4 at a time, against a closed port."""
    home = tmp_path_factory.mktemp("cli-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(home), TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    exe = Path(sys.executable).parent / "longsong"
    runs = {c.id: c.values[1] for c in CLI_CASES} | {"control": ["x", "--duration", "30"]}

    def run(argv):
        return subprocess.run([exe, "generate", *argv], env=env, capture_output=True, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(runs, pool.map(run, runs.values())))
    return done, home


def _stderr(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8", "backslashreplace")


@pytest.mark.parametrize("name, argv, field, allowed", CLI_CASES)
def test_cli_rejects_bad_input(cli_outcomes, name, argv, field, allowed):
    proc = cli_outcomes[0][name]
    lines = _stderr(proc).splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {_stderr(proc)}"
    assert len(lines) == 1, _stderr(proc)
    assert lines[0].startswith(f"longsong: error: {field}: ") and allowed in lines[0], lines[0]
    assert proc.stdout == b""


def test_cli_control_tries_to_connect_and_writes_nothing(cli_outcomes):
    done, home = cli_outcomes
    control = done["control"]
    assert control.returncode == 3 and "cannot reach the Temporal server" in _stderr(control)  # the port is closed
    assert [p for p in home.rglob("*") if p.is_file()] == []
