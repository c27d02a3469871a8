"""A throwaway PostgreSQL server on loopback for tests, from the Debian packages' binaries.

    with pg_server() as url:  # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        ...

initdb into a fresh temp dir, trust authentication, a free loopback port, fsync off (a test server);
stopped and deleted when the block ends. PostgreSQL refuses to run as root, so as root the binaries run
as the `postgres` system user the Debian package creates. Missing binaries raise PostgresMissing, whose
message says `make test-data` installs them (tests fail on it rather than skip).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from longsong.devstack import free_port

BINARIES = "/usr/lib/postgresql/*/bin"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def binaries() -> Path:
    """The newest installed major version's bin dir."""
    found = [Path(p).parent for p in glob.glob(f"{BINARIES}/pg_ctl") if Path(p).with_name("initdb").exists()]
    if not found:
        raise PostgresMissing(f"no PostgreSQL server binaries ({BINARIES}/initdb, pg_ctl): `make test-data` "
                              f"installs the postgresql package")
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _as_server_user() -> list[str]:
    """Root runs the server as `postgres`; anyone else as themselves."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("running as root and there is no `postgres` system user to run the server as: "
                              "`make test-data` installs the postgresql package, which creates it") from None
    return ["runuser", "-u", "postgres", "--"]


def _run(args: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                           f"{chr(10) + tail if tail else ''}")


@contextlib.contextmanager
def pg_server() -> Iterator[str]:
    bin_dir, prefix = binaries(), _as_server_user()
    # Not pytest's tmp_path: its parents are root-only (0700), and the server user must reach its data dir.
    root = Path(tempfile.mkdtemp(prefix="longsong-pg-"))
    data, log = root / "data", root / "server.log"
    if prefix:
        shutil.chown(root, user="postgres", group="postgres")
    port = free_port()
    try:
        _run(prefix + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                       "--locale=C", "--no-sync"], "initdb")
        options = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200"
        _run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options,
                       "start"], "pg_ctl start", log)
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "pg_ctl stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def new_database(url: str) -> str:
    """CREATE DATABASE with a fresh name on the server at `url`; the URL of the new database."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"
