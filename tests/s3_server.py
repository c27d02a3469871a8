"""A real S3 server on loopback for tests: moto's server (moto[server]) in a subprocess.

Plain functions plus pytest fixtures; tests/conftest.py re-exports the fixtures:

    from s3_server import s3_server, s3_env  # noqa: F401

`s3_server` (session scope) yields the settings a client needs:
{AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION}.
`s3_env` (function scope) also puts them into os.environ for one test.
moto speaks the S3 protocol with the minio SDK but does not check signatures, secrets or presigned-URL
expiry; test those in our own code. Use a fresh bucket per test (`new_bucket_name()`); the server is shared.
`shared_s3_server().paused()` freezes the server (SIGSTOP; SIGCONT when the block ends) for outage tests: it
keeps its port, takes connections into the kernel's backlog and answers none of them until continued.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from longsong.devstack import free_port

ACCESS_KEY = "longsong-test-key"
SECRET_KEY = "longsong-test-secret"
REGION = "us-east-1"
S3_ENV_NAMES = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
# Settings that would change how a client reaches the server; cleared by s3_env.
_INTERFERING = ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CA_BUNDLE",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "LONGSONG_LINK_ENDPOINT", "LONGSONG_LINK_EXPIRY",
                "LONGSONG_RETENTION_DAYS", "LONGSONG_SCRATCH_EXPIRY_DAYS")


def new_bucket_name(stem: str = "longsong-test") -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


class S3TestServer:
    """A running moto server; `env` holds the client settings."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, log_path: Path):
        self.proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections wait in the backlog, nothing is answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self):
        """Frozen inside the block, continued when it ends (also on error)."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.resume()  # a stopped process would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except OSError:
        return False


def start_s3_server(host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0) -> S3TestServer:
    """Start `python -m moto.server` on host:port (a free port by default) and wait until it answers."""
    last_error = ""
    for _ in range(3):  # a free port can be taken between the probe and the bind: try another one
        p = port or free_port(host)
        log_path = Path(tempfile.mkdtemp(prefix="longsong-moto-")) / "moto.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(p)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        server = S3TestServer(proc, host, p, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(f"{server.endpoint}/moto-api/"):
                return server
            time.sleep(0.1)
        last_error = log_path.read_text(errors="replace")[-2000:]
        server.stop()
        if port:
            break
    raise RuntimeError(f"moto S3 server did not start on {host}: {last_error.strip() or 'no output'}")


_shared: S3TestServer | None = None


def shared_s3_server() -> S3TestServer:
    """One server per test process, started on first use and stopped at exit."""
    global _shared
    if _shared is None or not _shared.alive():
        _shared = start_s3_server()
        atexit.register(_shared.stop)
    return _shared


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """Settings {AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION} of a loopback S3."""
    yield dict(shared_s3_server().env)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """Like s3_server, with the settings also in os.environ (and interfering AWS_*/LONGSONG_* ones removed)."""
    for name in _INTERFERING:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server
