"""The `longsong` console script as a user runs it: subprocesses against the real dev server (fixture
`temporal_address`) with workers in this process: one module-wide set, on task queues of its own.

GPU queues: `fast` (the procedural engine), `slow` (paced like a model, for Ctrl-C and cancel while
running) and `flaky` (window 2 fails its first attempt after a delay, like a GPU OOM, then retries slowly).
A CLI run picks one with LONGSONG_GPU_QUEUE, since the submitting client names the song's queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import wave
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from temporalio.client import Client

from longsong import __version__
from longsong.client import LongsongClient, merge_pending
from longsong.credentials import load_signer
from longsong.devstack import free_port
from longsong.engines.base import TransientEngineError
from longsong.engines.procedural import ProceduralEngine
from longsong.engines.registry import EngineRegistry
from longsong.settings import Settings
from longsong.storage import FileStorage
from longsong.worker import build_worker
from longsong.workflows.messages import Progress

LONGSONG = Path(sys.executable).parent / "longsong"
FAILURE = "out of memory (model procedural, batch 2, window 1500 frames)"


class PacedEngine(ProceduralEngine):
    """The procedural engine paced like a model: `steps` steps of `step_s` per window, heartbeating."""

    def __init__(self, steps: int = 20, step_s: float = 0.1):
        super().__init__()
        self.steps, self.step_s = steps, step_s

    def generate(self, req, on_step):
        for step in range(self.steps):
            time.sleep(self.step_s)
            on_step(step, self.steps)
        return super().generate(req, on_step)


class FailsOnceEngine(ProceduralEngine):
    """Continuation windows: the first attempt fails after 1 s of steps with a retryable error; the retry
    takes about 6 s (time to watch it)."""

    def __init__(self):
        super().__init__()
        self.attempts: dict[int, int] = {}

    def generate(self, req, on_step):
        if req.context_frames:
            n = self.attempts[req.seed] = self.attempts.get(req.seed, 0) + 1
            steps = 10 if n == 1 else 60
            for step in range(steps):
                time.sleep(0.1)
                on_step(step, steps)
            if n == 1:
                raise TransientEngineError(FAILURE)
        return super().generate(req, on_step)


@dataclass
class Stack:
    address: str
    home: Path
    settings: Settings  # the fast queue's
    env: dict[str, str]

    def queue_env(self, queue: str) -> dict[str, str]:
        return dict(self.env, LONGSONG_GPU_QUEUE=f"{self.settings.gpu_queue}-{queue}")


@pytest.fixture(scope="module")
def stack(temporal_address, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(home=home, gpu_queue=f"cli-gpu-{tag}", cpu_queue=f"cli-cpu-{tag}", shutdown_grace_s=2,
                        retry_initial_s=0.2, retry_max_s=1)
    storage = FileStorage(home / "objects")  # the CLI's default store: $LONGSONG_HOME/objects
    engines = {"": ProceduralEngine(), "-slow": PacedEngine(), "-flaky": FailsOnceEngine()}
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()
    failed: list[BaseException] = []

    async def serve():
        try:
            client = await Client.connect(temporal_address)
            workers = [build_worker("cpu", client, settings, storage, signer=load_signer(settings))]  # dev CA
            workers += [build_worker("gpu", client, replace(settings, gpu_queue=settings.gpu_queue + suffix), storage,
                                     EngineRegistry([engine])) for suffix, engine in engines.items()]
            for w in workers:
                await w.__aenter__()
            ready.set()
            await stop.wait()
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in workers))
        except BaseException as e:  # noqa: BLE001 - reported to the fixture
            failed.append(e)
            ready.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(60) and not failed, failed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(home), TEMPORAL_ADDRESS=temporal_address, LONGSONG_GPU_QUEUE=settings.gpu_queue,
               LONGSONG_CPU_QUEUE=settings.cpu_queue, LONGSONG_RETRY_INITIAL_S="0.2", LONGSONG_RETRY_MAX_S="1",
               LONGSONG_WATERMARK_KEY=settings.watermark_key)
    try:
        yield Stack(temporal_address, home, settings, env)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(LONGSONG), *args], env=env, capture_output=True, text=True, timeout=timeout)


def one_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def new_id(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def wait_until(check, timeout: float = 60, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def finished(stack, tmp_path_factory):
    """A 30 s song made with `generate --wait --json` (the fast queue)."""
    song, out = new_id("cli-done"), tmp_path_factory.mktemp("cli-out")
    run = cli("generate", "calm piano", "--duration", "30", "--request-id", song, "--wait", "--json",
              "--output", str(out), env=stack.env)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["status"] == "completed" and res["attached"] is False and res["workflow_id"] == song
    return res


# ------------------------------------------------------------------------------------------ no server needed


def test_version():
    run = cli("--version", env=dict(os.environ))
    assert run.returncode == 0 and run.stdout.strip() == f"longsong {__version__}" == "longsong 0.1.0"


@pytest.mark.parametrize("args, line", [
    (["list", "--limit", "x"],
     "longsong: error: argument --limit: invalid int value: 'x' (see longsong list --help)"),
    (["generate", "x", "--duration", "x"],  # a request field: validation names the field, not the option
     "longsong: error: duration_s: must be a number >= 30 and <= 600, got 'x'"),
    (["status"], "longsong: error: the following arguments are required: id (see longsong status --help)"),
    (["frobnicate"], None),
    ([], "longsong: error: the following arguments are required: COMMAND (see longsong --help)"),
    (["list", "--user", "nobody' OR LongsongUserId != 'nobody"], None),
    (["status", "x", "--expiry", "604801"], None),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, line):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(tmp_path), TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")  # never reached
    run = cli(*args, env=env)
    assert run.returncode == 2, run.stderr
    got = one_line(run)
    assert got.startswith("longsong: error: ")
    if line:
        assert got == line
    if args[:2] == ["list", "--user"]:
        assert "user_id" in got
    if "--expiry" in args:
        assert "expiry" in got and "7 days" in got


def test_unreachable_server_exits_3(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(tmp_path), TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    run = cli("status", "some-song", env=env, timeout=60)
    assert run.returncode == 3 and "cannot reach the Temporal server" in one_line(run)


def test_verify_exit_codes(tmp_path):
    env = dict(os.environ, LONGSONG_HOME=str(tmp_path))
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n")
    for target, word in ((text, "not audio"), (tmp_path, "directory"), (tmp_path / "missing.wav", "does not exist")):
        run = cli("verify", str(target), env=env)
        assert run.returncode == 2 and word in one_line(run), run.stderr
    plain = tmp_path / "plain.wav"  # audio without a watermark: exit 1
    t = np.arange(32000 * 5) / 32000
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(plain), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(32000), w.writeframes(pcm.tobytes())
    run = cli("verify", str(plain), "--json", env=env)
    assert run.returncode == 1 and json.loads(run.stdout)["found"] is False, run.stderr


def test_verify_reports_where_the_mark_is(tmp_path):
    """15 s of a marked song then 15 s of an unmarked one: verify names the id, the speed it was read at
    and the time range that carries it, in text and JSON."""
    from groundtruth import mastering_set

    from longsong.audio.encode import encode
    from longsong.audio.mastering import master_track
    from longsong.audio.watermark import embed

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env["LONGSONG_HOME"] = str(tmp_path)
    settings = Settings.from_env(env)
    songs = [master_track(x, 32000, -14.0, -1.0)[0] for x in list(mastering_set(30.0).values())[:4]]
    marked = embed(songs[3], 32000, 0xBEEF, settings.watermark_secret)
    joined = np.concatenate([marked[:, : 15 * 32000], songs[0][:, 15 * 32000 :]], axis=1)
    path = tmp_path / "edit.flac"
    encode(joined, 32000, "flac", path, {})
    text = cli("verify", str(path), env=env)
    assert text.returncode == 0, text.stderr
    assert f"found: watermark id {0xBEEF} (0x0000beef)" in text.stdout and "in 0:00.0-0:15.0" in text.stdout
    got = json.loads(cli("verify", str(path), "--json", env=env).stdout)
    (mark,) = got["marks"]
    assert (mark["track_id"], mark["speed"], got["watermark_id"]) == (0xBEEF, 1.0, 0xBEEF)
    assert [(s["start_s"], s["end_s"]) for s in mark["spans"]] == [(0.0, 15.0)]


def test_stalled_heartbeat_hides_the_eta():
    """A running window silent for 30 s (its worker may be gone) has no ETA, and the status line says why."""
    from temporalio.api.enums.v1 import PendingActivityState
    from temporalio.api.workflow.v1 import PendingActivityInfo

    from longsong.cli_progress import activity_line

    now = datetime.now(timezone.utc)
    info = PendingActivityInfo(attempt=1, maximum_attempts=5, state=PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    info.activity_type.name = "generate_segment"
    info.last_started_time.FromDatetime(now - timedelta(seconds=40))
    info.last_heartbeat_time.FromDatetime(now - timedelta(seconds=30))
    p = merge_pending(Progress("generating", 2, 6, 50.0, 40.0, 30, "", ""), info, now)
    assert p.stalled and not p.retrying and p.eta_s is None and p.window == 3
    assert p.heartbeat_age_s == pytest.approx(30, abs=0.01)
    assert activity_line(p).startswith("window 3 silent: attempt 1 of 5, last heartbeat 30 s ago")
    fresh = merge_pending(Progress("generating", 2, 6, 50.0, 40.0, 30, "", ""), replace_heartbeat(info, now), now)
    assert not fresh.stalled and fresh.eta_s == 40.0 and activity_line(fresh) == ""


def replace_heartbeat(info, now):
    from temporalio.api.workflow.v1 import PendingActivityInfo

    copy = PendingActivityInfo()
    copy.CopyFrom(info)
    copy.last_heartbeat_time.FromDatetime(now - timedelta(seconds=1))
    return copy


# ------------------------------------------------------------------------------------------ against the stack


def test_generate_wait_then_status_links_and_download(stack, finished, tmp_path):
    song = finished["workflow_id"]
    assert set(finished["files"]) == {"mp3", "wav", "metadata", "waveform"}
    run = cli("status", song, "--json", "--links", "--expiry", "60", env=stack.env)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "completed" and out["stage"] == "done" and "urls" not in out["result"]
    assert set(out["links"]) == set(out["result"]["files"]) == set(finished["files"])
    for name, link in out["links"].items():
        assert link.startswith("file://") and link.endswith(out["result"]["files"][name])
    text = cli("status", song, "--links", env=stack.env)
    assert text.returncode == 0 and text.stdout.startswith(f"{song}: completed") and "file://" in text.stdout
    too_long = cli("status", song, "--json", "--links", "--expiry", str(8 * 86400), env=stack.env)
    assert too_long.returncode == 2 and one_line(too_long).startswith("longsong: error: expiry: ")
    dl = cli("download", song, "--output", str(tmp_path / "dl"), env=stack.env)
    assert dl.returncode == 0, dl.stderr
    assert (tmp_path / "dl" / "track.mp3").read_bytes() == Path(finished["files"]["mp3"]).read_bytes()
    verify = cli("verify", finished["files"]["wav"], "--json", env=stack.env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["watermark_id"] == finished["watermark_id"]
    creds = json.loads(verify.stdout)["credentials"]  # signed by the stack's dev CA, which verify trusts
    assert creds["trusted"] and creds["claim"]["song_id"] == song, creds
    assert creds["claim"]["watermark_id"] == finished["watermark_id"]


def test_global_options_after_the_command(stack, finished):
    song = finished["workflow_id"]
    env = dict(stack.env, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")  # only the option reaches the server
    for args in (["status", song, "--address", stack.address, "--namespace", "default", "--json"],
                 ["--address", stack.address, "status", song, "--json"]):
        run = cli(*args, env=env)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["status"] == "completed"
    assert cli("status", song, "--json", env=env).returncode == 3


def test_same_request_id_attaches_with_the_real_status_and_a_different_request_conflicts(stack, finished):
    song = finished["workflow_id"]
    again = cli("generate", "calm piano", "--duration", "30", "--request-id", song, "--json", env=stack.env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) | {"ui_url": ""} == {"workflow_id": song, "status": "completed",
                                                         "attached": True, "ui_url": ""}
    text = cli("generate", "calm piano", "--duration", "30", "--request-id", song, env=stack.env)
    assert text.returncode == 0 and f"attached to existing (completed) song {song}" in text.stderr
    other = cli("generate", "loud drums", "--duration", "40", "--request-id", song, "--json", env=stack.env)
    assert other.returncode == 2
    assert one_line(other) == (f"longsong: error: request_id {song} already names a different song "
                               f"(differs in: prompt, duration_s); use another request_id")
    user = cli("generate", "calm piano", "--duration", "30", "--request-id", song, "--user", "zed", env=stack.env)
    assert user.returncode == 2 and "(differs in: user_id)" in one_line(user)


def test_failed_song_attach_and_exit_4(stack):
    song = new_id("cli-fail")  # musicgen is not served by these workers: a non-retryable failure
    args = ("generate", "warm jazz", "--duration", "30", "--engine", "musicgen", "--request-id", song, "--json")
    first = cli(*args, env=stack.env)
    assert first.returncode == 0 and json.loads(first.stdout)["attached"] is False, first.stderr
    waited = cli("status", song, "--wait", "--json", env=stack.env)
    assert waited.returncode == 4, waited.stderr
    out = json.loads(waited.stdout)
    assert out["status"] == "failed" and "not served" in out["failure"]
    assert "not served" in one_line(waited)
    again = cli(*args, env=stack.env)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "failed"
    assert json.loads(again.stdout)["attached"] is True
    wait = cli(*args, "--wait", env=stack.env)
    assert wait.returncode == 4 and "did not complete" in one_line(wait)
    dl = cli("download", song, "--output", "/nonexistent/never", env=stack.env)
    assert dl.returncode == 4 and "did not complete" in one_line(dl)
    cancel = cli("cancel", song, env=stack.env)
    assert cancel.returncode == 4 and one_line(cancel) == f"longsong: error: song {song} already failed: nothing to cancel"


def test_unknown_song_exits_5(stack, tmp_path):
    for args in (["status", "no-such-song"], ["status", "no-such-song", "--wait"], ["cancel", "no-such-song"],
                 ["download", "no-such-song", "--output", str(tmp_path)]):
        run = cli(*args, env=stack.env)
        assert run.returncode == 5, (args, run.stderr)
        assert one_line(run) == "longsong: error: no song no-such-song in namespace default"


def test_cancel_of_a_finished_song_exits_4(stack, finished):
    song = finished["workflow_id"]
    run = cli("cancel", song, env=stack.env)
    assert run.returncode == 4 and one_line(run) == f"longsong: error: song {song} already completed: nothing to cancel"


def test_ctrl_c_detaches_and_the_song_keeps_running(stack, tmp_path):
    """Ctrl-C in `generate --wait` and in `status --wait`: one line, exit 130; the song completes."""
    song, env = new_id("cli-sigint"), stack.queue_env("slow")
    args = ["generate", "slow ambient drift", "--duration", "90", "--request-id", song]
    proc = subprocess.Popen([str(LONGSONG), *args, "--wait", "--json", "--output", str(tmp_path / "out")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: cli("status", song, "--json", env=env).returncode == 0)  # submitted and running
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr == f"detached; the song keeps running: longsong status {song} --wait\n"
    assert stdout == ""

    follower = subprocess.Popen([str(LONGSONG), "status", song, "--wait", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    follower.send_signal(signal.SIGINT)
    stdout, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 130, stderr
    assert stderr == f"detached; the song keeps running: longsong status {song} --wait\n"

    attach = cli(*args, "--json", env=env)  # still running: attaching says so
    assert attach.returncode == 0, attach.stderr
    assert json.loads(attach.stdout)["attached"] is True and json.loads(attach.stdout)["status"] == "running"
    done = cli("status", song, "--wait", env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{song}: completed, stage done"), done.stdout


def test_cancel_a_running_song_then_again(stack):
    song, env = new_id("cli-cancel"), stack.queue_env("slow")
    run = cli("generate", "slow strings", "--duration", "120", "--request-id", song, "--json", env=env)
    assert run.returncode == 0, run.stderr
    wait_until(lambda: (stack.home / "objects" / "work" / song).exists(), timeout=60, every=0.05)
    cancel = cli("cancel", song, env=env)
    assert cancel.returncode == 0 and cancel.stdout.strip() == f"cancellation requested for {song}", cancel.stderr
    waited = cli("status", song, "--wait", "--json", env=env)
    assert waited.returncode == 4 and json.loads(waited.stdout)["status"] == "canceled", waited.stderr
    again = cli("cancel", song, env=env)
    assert again.returncode == 4 and one_line(again) == f"longsong: error: song {song} already canceled: nothing to cancel"


def test_a_retried_window_shows_attempt_and_failure_not_an_eta(stack):
    """Window 2 fails its first attempt after 1 s (a GPU OOM); while the retry runs, progress() and the
    status line report attempt 2 of 5 and the failure, and no ETA."""
    song, env = new_id("cli-retry"), stack.queue_env("flaky")
    run = cli("generate", "retry me", "--duration", "45", "--request-id", song, "--json", env=env)
    assert run.returncode == 0, run.stderr

    async def watch():
        lc = LongsongClient(await Client.connect(stack.address), stack.settings)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            p = await lc.progress(song)
            if p.attempt == 2 and p.heartbeat_age_s is not None:  # the retry is running
                return p
            await asyncio.sleep(0.1)
        raise AssertionError(f"no second attempt seen: {p}")

    p = asyncio.run(watch())
    assert p.activity == "generate_segment" and p.window == 2 and p.max_attempts == 5
    assert p.retrying and p.eta_s is None and p.last_failure == FAILURE
    status = cli("status", song, env=env)
    assert status.returncode == 0, status.stderr
    assert f"retrying window 2: attempt 2 of 5, last failure: {FAILURE}, last heartbeat " in status.stdout
    assert "ETA" not in status.stdout
    as_json = json.loads(cli("status", song, "--json", env=env).stdout)
    assert as_json["attempt"] == 2 and as_json["retrying"] is True and as_json["eta_s"] is None
    done = cli("status", song, "--wait", "--json", env=env, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "completed", done.stderr
