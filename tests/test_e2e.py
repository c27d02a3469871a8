"""End to end as a user runs it: `longsong dev up` (real dev server + both worker processes),
`longsong generate --wait --json` for a 3-minute track, then checks on the files it wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longsong.audio.encode import decode
from longsong.audio.loudness import integrated_loudness
from longsong.audio.true_peak import true_peak_dbtp
from longsong.audio.watermark import detect
from longsong.devstack import START_TRIES, _start_temporal, free_port, server_command
from longsong.plan import make_plan
from longsong.request import SongRequest, validate

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "longsong"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(home), LONGSONG_DEV_PORT=str(free_port()),
               LONGSONG_API_PORT=str(free_port()), LONGSONG_METRICS_ADDR="", LONGSONG_DEV_UI_PORT=str(free_port()),
               LONGSONG_WATERMARK_KEY="e2e-secret")
    up = cli("dev", "up", env=env)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        yield env, home
    finally:
        down = cli("dev", "down", env=env)
        assert down.returncode == 0, down.stderr


def test_cli_makes_a_three_minute_track(stack, tmp_path):
    env, home = stack
    status = cli("dev", "status", env=env)
    assert status.stdout.count("running") == 4, status.stdout
    out = tmp_path / "out"
    run = cli("generate", "uplifting synthwave with a driving bassline", "--duration", "180", "--bpm", "110",
              "--key", "A minor", "--section", "0:intro", "--section", "40:verse", "--section", "90:chorus",
              "--section", "150:outro", "--format", "mp3", "--format", "wav", "--format", "flac",
              "--wait", "--json", "--output", str(out), env=env)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    for field in ("workflow_id", "status", "duration_s", "seed", "loudness_lufs", "true_peak_dbtp",
                  "watermark_id", "files"):
        assert field in res
    assert res["status"] == "completed" and res["engine"] == "procedural"
    files = {k: Path(v) for k, v in res["files"].items()}
    assert set(files) == {"mp3", "wav", "flac", "metadata", "waveform"}

    wav, sr = decode(files["wav"])
    assert sr == 32000 and wav.shape == (2, 180 * 32000)  # exact to the sample
    assert abs(integrated_loudness(wav, sr) + 14) <= 0.5
    assert true_peak_dbtp(wav, sr) <= -1.0 + 1e-6
    mp3, msr = decode(files["mp3"])
    assert true_peak_dbtp(mp3, msr) <= -1.0 + 0.1
    assert abs(mp3.shape[1] / msr - 180) < 0.1

    key = b"e2e-secret"
    for name in ("wav", "mp3"):
        audio, rate = decode(files[name])
        found = detect(audio, rate, key)
        assert found.found and found.track_id == res["watermark_id"], name
    assert not detect(wav, sr, b"another-key").found

    meta = json.loads(files["metadata"].read_text())
    assert meta["watermark"]["id"] == res["watermark_id"] and meta["seed"] == res["seed"]
    assert meta["request"]["duration_s"] == 180 and len(meta["plan"]["segments"]) == 10
    assert meta["plan"]["segments"][-1]["text"].endswith("outro")
    for name in ("mp3", "wav", "flac", "waveform"):
        assert meta["files"][name]["size"] == files[name].stat().st_size
    assert files["waveform"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(meta["seams"]) == 9

    verify = cli("verify", str(files["mp3"]), "--json", env=env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["watermark_id"] == res["watermark_id"]
    listing = cli("list", "--json", env=env)
    assert res["workflow_id"] in listing.stdout
    status = cli("status", res["workflow_id"], "--json", env=env)
    assert json.loads(status.stdout)["status"] == "completed"
    # Nothing but finished tracks under audio/, no scratch left.
    assert not [p for p in (home / "objects").glob("work/**/*") if p.is_file()]


def test_cli_extends_and_redoes_a_song(stack, tmp_path):
    env, home = stack
    parent = cli("generate", "warm lofi hip hop with soft keys", "--duration", "48", "--bpm", "86", "--key", "F minor",
                 "--format", "wav", "--request-id", "e2e-lofi", "--wait", "--json", "--output", str(tmp_path / "p"),
                 env=env)
    assert parent.returncode == 0, parent.stderr
    ext = cli("extend", "e2e-lofi", "--duration", "30", "--section", "0:bridge, sparse keys", "--outro", "--wait",
              "--json", "--output", str(tmp_path / "e"), env=env)
    assert ext.returncode == 0, ext.stderr
    res = json.loads(ext.stdout)
    assert res["parent_id"] == "e2e-lofi" and res["duration_s"] == pytest.approx(78) and res["quality"] != "off"
    meta = json.loads(Path(res["files"]["metadata"]).read_text())
    assert meta["parent"] == {"request_id": "e2e-lofi", "kept_windows": 2, "from_s": 48.0}
    assert [w["inherited_from"] for w in meta["windows"]][:2] == ["e2e-lofi"] * 2
    redo = cli("regenerate", "e2e-lofi", "--from-window", "1", "--seed", "7", "--wait", "--json", "--output",
               str(tmp_path / "r"), env=env)
    assert redo.returncode == 0, redo.stderr
    bad = cli("regenerate", "e2e-lofi", "--from-window", "5", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("longsong: error: from_window: must be 1-1 (the song has 2 windows"), bad.stderr
    missing = cli("extend", "no-such-song", "--duration", "30", env=env)
    assert missing.returncode == 2 and "parent_id: no song no-such-song" in missing.stderr, missing.stderr


def test_dev_stack_serves_the_api_with_a_local_key(stack):
    import httpx

    env, home = stack
    status = cli("dev", "status", env=env).stdout
    page = re.search(r"listening page: (http://127\.0\.0\.1:\d+/)", status).group(1)
    key = re.search(r"API key \(user local\): (\S+)", status).group(1)
    assert key == (home / "dev-key").read_text().strip() and oct((home / "dev-key").stat().st_mode)[-3:] == "600"
    assert cli("dev", "status", env=env).stdout == status  # the same key every time
    with httpx.Client(base_url=page, timeout=30) as http:
        assert "<title>" in http.get("/").text
        assert http.get("/readyz").json() == {"temporal": "ok", "storage": "ok", "database": "ok"}
        assert http.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()["user_id"] == "local"
        made = cli("keys", "create", "--user", "zed", "--name", "e2e", "--json", env=env)
        assert made.returncode == 0, made.stderr
        new = json.loads(made.stdout)
        assert len(new["webhook_secret"]) == 64
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {new['key']}"}).json()
        assert (me["user_id"], me["key_name"]) == ("zed", "e2e")
        listed = cli("keys", "list", "--user", "zed", env=env).stdout
        assert new["key_id"] in listed and "active" in listed and new["key"] not in listed
        assert cli("keys", "revoke", new["key_id"], env=env).returncode == 0
        assert http.get("/v1/me", headers={"Authorization": f"Bearer {new['key']}"}).status_code == 401
        quota = cli("keys", "quota", "--user", "zed", "--concurrent", "9", env=env)
        assert json.loads(quota.stdout)["concurrent"] == 9
        bad = cli("keys", "quota", "--user", "zed", "--burst", "lots", env=env)
        assert bad.returncode == 2 and bad.stderr.strip() == \
            "longsong: error: --burst: must be an integer or 'default', got 'lots'"
        missing = cli("keys", "revoke", "nope", env=env)
        assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_cli_rejects_bad_input_with_one_line(stack):
    env, home = stack
    before = sorted((home / "objects").rglob("*"))
    for args, field in ((["--duration", "5"], "duration_s"), (["--format", "aac"], "formats"),
                        (["--bpm", "500"], "bpm"), (["--section", "10:late"], "sections[0].start_s")):
        run = cli("generate", "x", *args, env=env)
        assert run.returncode == 2
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0], run.stderr
    assert sorted((home / "objects").rglob("*")) == before  # nothing written


def test_cli_unreachable_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(tmp_path), TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    run = cli("generate", "x", "--duration", "30", env=env, timeout=60)
    assert run.returncode == 3 and "cannot reach the Temporal server" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_gpu_worker_shuts_down_gracefully_on_sigterm(stack, tmp_path):
    env, _ = stack
    env = dict(env, TEMPORAL_ADDRESS=f"127.0.0.1:{env['LONGSONG_DEV_PORT']}", LONGSONG_GPU_QUEUE="sigterm-test")
    proc = subprocess.Popen([sys.executable, "-m", "worker_gpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "GPU worker" in line:
            break
    assert "serving procedural:procedural-v1" in "".join(lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "shutting down" in proc.stdout.read()


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    blocker = tmp_path / "file"
    blocker.write_text("")
    env.update(LONGSONG_HOME=str(blocker / "home"))
    run = cli("dev", "up", env=env, timeout=60)
    assert run.returncode == 2 and "LONGSONG_HOME" in run.stderr and "not writable" in run.stderr


def test_a_dev_server_that_loses_its_port_race_is_started_again(tmp_path):
    """The race seen in CI: a port picked free is taken by a bound socket (an outgoing connection's local
    port) before the server binds it; the server exits with "address already in use" and is started again."""
    log = tmp_path / "t.log"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # bound, not listening: what a client connection holds
    ports = [taken.getsockname()[1], free_port()]
    procs = []

    def spawn():
        port = ports[len(procs)]
        with open(log, "ab") as out:
            procs.append(subprocess.Popen(server_command(tmp_path / "t.db", port, None, "warn"), stdout=out,
                                          stderr=subprocess.STDOUT))
        proc = procs[-1]
        return f"127.0.0.1:{port}", lambda: proc.poll() is None

    try:
        assert _start_temporal(spawn, log) == f"127.0.0.1:{ports[1]}"
        assert len(procs) == 2 and procs[0].returncode == 1 and "address already in use" in log.read_text()
    finally:
        taken.close()
        for proc in procs:
            proc.kill()
            proc.wait()


def test_dev_port_held_by_a_socket_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env.update(LONGSONG_HOME=str(tmp_path / "home"), LONGSONG_DEV_PORT=str(port),
                   LONGSONG_API_PORT=str(free_port()), LONGSONG_METRICS_ADDR="", LONGSONG_DEV_UI_PORT=str(free_port()))
        run = cli("dev", "up", env=env, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"can't set frontend port {port}" in run.stderr and "address already in use" in run.stderr
    assert (tmp_path / "home" / "logs" / "temporal.log").read_text().count("address already in use") == START_TRIES


def test_free_ports_lie_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(20000 <= free_port() < low for _ in range(50))


def test_a_killed_dev_server_keeps_its_songs_and_workers_reconnect(tmp_path):
    """kill -9 of the dev server (its SQLite file in WAL mode without per-commit fsync): after
    `dev up` restarts it, the finished song is still there and the same workers serve a new one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    env.update(LONGSONG_HOME=str(tmp_path / "home"), LONGSONG_DEV_PORT=str(free_port()),
               LONGSONG_API_PORT=str(free_port()), LONGSONG_METRICS_ADDR="",
               LONGSONG_DEV_UI_PORT=str(free_port()))
    up = cli("dev", "up", env=env)
    assert up.returncode == 0, up.stderr
    try:
        first = cli("generate", "calm piano", "--duration", "30", "--wait", "--json", "--output",
                    str(tmp_path / "a"), env=env)
        assert first.returncode == 0, first.stderr
        song = json.loads(first.stdout)["workflow_id"]
        assert (tmp_path / "home" / "temporal.db-wal").exists()  # the pragmas reached the server
        run_dir = tmp_path / "home" / "run"
        server, workers = (int((run_dir / f"{n}.pid").read_text()) for n in ("temporal", "worker-gpu"))
        os.kill(server, signal.SIGKILL)
        while Path(f"/proc/{server}").exists() and Path(f"/proc/{server}/stat").read_text().split()[2] != "Z":
            time.sleep(0.05)
        again = cli("dev", "up", env=env)
        assert again.returncode == 0, again.stderr
        status = cli("status", song, "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["status"] == "completed", status.stderr
        second = cli("generate", "calm piano", "--duration", "30", "--wait", "--json", "--output",
                     str(tmp_path / "b"), env=env)
        assert second.returncode == 0, second.stderr
        assert int((run_dir / "worker-gpu.pid").read_text()) == workers  # served by the worker that lived on
    finally:
        cli("dev", "down", env=env)


def test_a_killed_gpu_worker_loses_no_finished_segment(tmp_path):
    """kill -9 of the GPU worker mid-song, then `dev up` starts a new one: the song completes, the
    windows finished before the kill keep their first (and only) run, the new worker takes over
    from the interrupted window (retried once its heartbeat times out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    home = tmp_path / "home"
    # the interrupted window is retried once its heartbeat times out: 5 s here, not the default minute
    env.update(LONGSONG_HOME=str(home), LONGSONG_DEV_PORT=str(free_port()),
               LONGSONG_API_PORT=str(free_port()), LONGSONG_METRICS_ADDR="", LONGSONG_DEV_UI_PORT=str(free_port()),
               LONGSONG_HEARTBEAT_TIMEOUT_S="5", LONGSONG_STORAGE_TIMEOUT_S="4")
    up = cli("dev", "up", env=env)
    assert up.returncode == 0, up.stderr
    try:
        # no quality gate: the windows run one after another, as this drill counts them
        submitted = cli("generate", "slow ambient drift", "--duration", "600", "--format", "wav", "--max-rerolls", "0",
                        "--json", env=env)
        assert submitted.returncode == 0, submitted.stderr
        song = json.loads(submitted.stdout)["workflow_id"]
        work = home / "objects" / "work" / song
        old_worker = int((home / "run" / "worker-gpu.pid").read_text())
        deadline = time.monotonic() + 120
        while not list(work.glob("seg-004.a*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(old_worker, signal.SIGKILL)
        finished_before = {p.name for p in work.glob("seg-*.json")}
        assert len(finished_before) >= 5
        again = cli("dev", "up", env=env)
        assert again.returncode == 0, again.stderr
        new_worker = int((home / "run" / "worker-gpu.pid").read_text())
        assert new_worker != old_worker
        done = cli("download", song, "--output", str(tmp_path / "out"), env=env, timeout=300)
        status = cli("status", song, "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["status"] == "completed", status.stdout
    finally:
        cli("dev", "down", env=env)
    assert done.returncode == 0, done.stderr
    segments = json.loads((tmp_path / "out" / "metadata.json").read_text())["plan"]["segments"]
    assert len(segments) == len(make_plan(validate(SongRequest(prompt="x", duration_s=600)), 0).segments)
    workers = [int(s["worker"].split("@")[0]) for s in segments]
    # The last record seen before the kill may belong to a window whose completion had not reached the
    # server yet; every earlier one must be the first run, by the killed worker.
    certain = len(finished_before) - 1
    assert workers[:certain] == [old_worker] * certain
    assert all(s["attempt"] == 1 for s in segments[:certain])
    assert workers[-1] == new_worker and set(workers) == {old_worker, new_worker}
