"""Nothing leaks after a crash: temporary files live under the data dir (`$LONGSONG_HOME/tmp`) or the file
store's `.tmp/`, named after their writer (pid, process start, host), and the workers sweep the stale ones at
start. The drill kills the CPU worker (kill -9) three times while it finishes a 10-minute song, as a user's
machine would, through `longsong dev up` and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longsong import atomic
from longsong.atomic import disk_usage, is_stale, replacing, sweep, temp_dir, temp_name, writer_tag
from longsong.devstack import free_port
from longsong.storage import FileStorage, ObjectInfo, Storage

BIN = Path(sys.executable).parent
DAY = 24 * 3600


def dead_writer_name(stem: str) -> str:
    """A temporary name made by a process that has exited since."""
    out = subprocess.run([sys.executable, "-c", f"from longsong.atomic import temp_name; print(temp_name({stem!r}))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ------------------------------------------------------------------------------------------ names and sweeping


def test_temporary_names_carry_the_writer():
    tag = writer_tag()
    assert tag.startswith(f"pid{os.getpid()}-") and tag == writer_tag()
    name = temp_name("finish")
    assert name.startswith(f"finish-{tag}-") and not set(name) & set("|[]:\\'\" ")  # ffmpeg tee syntax


def test_sweep_removes_what_dead_or_old_writers_left(tmp_path):
    dead = tmp_path / dead_writer_name("finish")
    dead.mkdir()
    (dead / "track.wav").write_bytes(b"x" * 1000)
    dead_file = tmp_path / f".{dead_writer_name('track.wav')}.tmp"
    dead_file.write_bytes(b"y")
    live = tmp_path / temp_name("finish")  # this process: alive
    live.mkdir()
    old_live = tmp_path / f".{temp_name('x')}.tmp"
    old_live.write_bytes(b"")
    _age(old_live, DAY + 60)
    foreign = tmp_path / "someone-elses-file"  # no writer tag: only the age tells
    foreign.write_bytes(b"")
    old_foreign = tmp_path / ".track.mp3.0123456789ab.tmp"  # the names before writer tags
    old_foreign.write_bytes(b"")
    _age(old_foreign, DAY + 60)
    other_host = tmp_path / f"finish-pid1-1-{'0' * 8}-abcdef"  # another machine's writer (shared folder)
    other_host.mkdir()
    reused = tmp_path / f"finish-pid{os.getpid()}-1-{writer_tag().rsplit('-', 1)[1]}-abcdef"  # our pid, not us
    reused.mkdir()

    removed = sweep(tmp_path)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (dead, dead_file, old_live, old_foreign,
                                                                      reused))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, foreign, other_host))
    assert sweep(tmp_path) == [] and sweep(tmp_path / "missing") == []
    assert not is_stale(live) and not is_stale(tmp_path / "gone")


def test_temp_dir_and_replacing(tmp_path):
    with temp_dir("finish", tmp_path / "tmp") as d:
        assert d.parent == tmp_path / "tmp" and d.name.startswith(f"finish-{writer_tag()}-")
        with replacing(d / "track.wav") as t:
            assert t.parent == d and t.name.startswith(f".track.wav-{writer_tag()}-") and t.name.endswith(".tmp")
            t.write_bytes(b"1")
        assert (d / "track.wav").read_bytes() == b"1"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_file_store_sweeps_its_tmp(tmp_path):
    store = FileStorage(tmp_path / "objects")
    leftover = tmp_path / "objects" / ".tmp" / f".{dead_writer_name('track.wav')}.tmp"
    leftover.write_bytes(b"z" * 100)
    store.put_bytes("audio/u/r/track.wav", b"ok")
    assert store.sweep_temporary() == [leftover.name]
    assert list((tmp_path / "objects" / ".tmp").iterdir()) == []
    assert store.get_bytes("audio/u/r/track.wav") == b"ok"


def test_base_bytes_go_through_the_data_dir(tmp_path, monkeypatch):
    """A backend without its own put_bytes/get_bytes: the temporary file is under the data dir's tmp/."""
    monkeypatch.setattr(atomic, "_root", None)
    atomic.set_temp_root(tmp_path / "home" / "tmp")
    seen = []

    class Minimal(Storage):
        url = "minimal://"
        blobs: dict[str, bytes] = {}

        def put_file(self, key, path, content_type="application/octet-stream", metadata=None):
            seen.append(Path(path))
            self.blobs[key] = Path(path).read_bytes()
            return ObjectInfo(key, len(self.blobs[key]), "")

        def get_file(self, key, path):
            seen.append(Path(path))
            Path(path).write_bytes(self.blobs[key])

        exists = list = delete_prefix = link = None

    st = Minimal()
    st.put_bytes("k", b"data")
    assert st.get_bytes("k") == b"data"
    assert all(p.is_relative_to(tmp_path / "home" / "tmp") for p in seen) and len(seen) == 2
    assert list((tmp_path / "home" / "tmp").iterdir()) == []


# ------------------------------------------------------------------------------------------ the drill


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "longsong"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _tagged(folder: Path, pid: int) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if f"pid{pid}-" in p.name]
    except FileNotFoundError:
        return []


def _system_tmp() -> set[str]:
    """longsong-* entries in the system temp dir (the S3 test servers' log folders are the tests' own)."""
    return {p.name for p in Path("/tmp").glob("longsong-*") if not p.name.startswith("longsong-moto-")}


def _leftovers(home: Path) -> dict[str, int]:
    """Bytes in each place temporary files may be: the data dir's tmp/, the store's .tmp/ and scratch work/;
    plus anything else under the data dir but the finished tracks, the dev server's database and the logs."""
    objects = home / "objects"
    known = {"tmp": home / "tmp", "objects/.tmp": objects / ".tmp", "objects/work": objects / "work"}
    out = {name: disk_usage(path) for name, path in known.items()}
    other = 0
    for dirpath, dirnames, filenames in os.walk(home):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in known.values() and here / d not in (
            objects / "audio", home / "logs", home / "run")]
        other += sum((here / f).stat().st_size for f in filenames
                     if not f.startswith(("temporal.db", "longsong.db")))  # the servers' databases
    out["elsewhere"] = other
    return out


@pytest.mark.e2e
def test_killed_cpu_workers_leave_nothing_behind(tmp_path):
    """kill -9 of the CPU worker three times while it finishes a 600 s wav song (twice while it encodes into the
    data dir's tmp/, once while it copies the track into the store's .tmp/), `longsong dev up` after each: the
    new worker sweeps what the dead one left, the song completes, and the data dir is back at its baseline but
    for the track; nothing in /tmp."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    # a killed finish is retried once its heartbeat times out: 10 s here, not the default minute
    env.update(LONGSONG_HOME=str(home), LONGSONG_DEV_PORT=str(free_port()),
               LONGSONG_API_PORT=str(free_port()), LONGSONG_METRICS_ADDR="", LONGSONG_DEV_UI_PORT=str(free_port()),
               LONGSONG_HEARTBEAT_TIMEOUT_S="10", LONGSONG_STORAGE_TIMEOUT_S="5")
    system_tmp = _system_tmp()
    up = cli("dev", "up", env=env)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        baseline = _leftovers(home)
        submitted = cli("generate", "slow ambient drift", "--duration", "600", "--format", "wav", "--json", env=env)
        assert submitted.returncode == 0, submitted.stderr
        song = json.loads(submitted.stdout)["workflow_id"]

        deadline = time.monotonic() + 300
        while True:
            status = cli("status", song, "--json", env=env, timeout=60)
            stage = json.loads(status.stdout)["stage"] if status.returncode == 0 else ""
            if stage == "finishing":
                break
            assert stage in ("", "queued", "generating") and time.monotonic() < deadline, status.stdout
            time.sleep(0.1)

        leaked = []
        for round_, where in enumerate((home / "tmp", home / "objects" / ".tmp", home / "tmp")):
            pid = int((home / "run" / "worker-cpu.pid").read_text())
            deadline = time.monotonic() + 120
            while True:  # this worker's finish attempt is writing where this round kills it
                mine = _tagged(where, pid)
                if mine and (where.name == ".tmp" or any(disk_usage(p) for p in mine)):
                    break
                assert time.monotonic() < deadline, f"round {round_ + 1}: worker {pid} wrote nothing in {where}"
                time.sleep(0.001)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)
            left = {name: size for name, size in _leftovers(home).items()}
            leaked.append(left)
            assert _tagged(where, pid), f"round {round_ + 1}: the kill left nothing to sweep"
            again = cli("dev", "up", env=env)
            assert again.returncode == 0, again.stderr + again.stdout
            new = int((home / "run" / "worker-cpu.pid").read_text())
            assert new != pid
            for folder in (home / "tmp", home / "objects" / ".tmp"):  # swept by the new worker at its start
                assert not _tagged(folder, pid), (round_, sorted(p.name for p in folder.iterdir()))

        deadline = time.monotonic() + 300
        while True:
            status = cli("status", song, "--json", env=env, timeout=60)
            if status.returncode == 0 and json.loads(status.stdout)["status"] != "running":
                break
            assert time.monotonic() < deadline, status.stdout
            time.sleep(1)
        assert json.loads(status.stdout)["status"] == "completed", status.stdout
        after = _leftovers(home)
    finally:
        cli("dev", "down", env=env)
    print(f"baseline {baseline}; after each kill {leaked}; after the song {after}")
    assert all(sum(left.values()) > sum(baseline.values()) for left in leaked)  # each kill did leak, until swept
    assert after == baseline, (baseline, after)
    assert (home / "objects" / "audio").is_dir() and list((home / "objects" / "audio").rglob("track.wav"))
    assert _system_tmp() <= system_tmp, sorted(_system_tmp() - system_tmp)
