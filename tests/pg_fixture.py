"""A throwaway PostgreSQL server for the tests (session-scoped fixtures).

:func:`pg_server` creates a cluster with ``initdb`` in a temporary folder, starts it
on 127.0.0.1 on a free port (no Unix socket outside that folder), creates a role
with a password (``scram-sha-256`` over TCP, so that tests can check the password
is masked everywhere) and stops and deletes everything at the end.
:func:`pg_url` gives each test a fresh database of its own.

PostgreSQL refuses to run as root: when the tests run as root, the server runs as
the ``postgres`` user (``runuser``); otherwise as the current user. The binaries are
looked up on the PATH, then in ``/usr/lib/postgresql/*/bin``; without them, or
without psycopg, the tests that need the server are skipped with the reason (on a
machine without PostgreSQL: ``apt-get install -y postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PgServer", "available", "pg_server", "pg_url", "pytest_configure", "throwaway_server"]

ROLE = "skllm_app"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "postgres: needs a PostgreSQL server (started by tests/pg_fixture.py)"
    )


@dataclass(frozen=True)
class PgServer:
    """A running test server: ``admin_url`` (superuser), the app role's password."""

    host: str
    port: int
    password: str
    admin_url: str
    log: Path

    def url(self, dbname: str, *, password: bool = True) -> str:
        """A libpq URL for the app role on ``dbname``."""
        auth = f"{ROLE}:{self.password}" if password else ROLE
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")


def _start(base: Path, port: int, admin_password: str) -> None:
    pwfile = base / "pwfile"
    pwfile.write_text(admin_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    data = base / "data"
    _run(
        [
            _binary("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        " -c max_connections=100"
    )
    _run(
        [_binary("pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"]
    )


def available() -> str | None:
    """Why a throwaway server cannot run here, or ``None`` when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL cache needs psycopg 3: pip install 'psycopg[binary]'"
    if _binary("initdb") is None or _binary("pg_ctl") is None:
        return "PostgreSQL is not installed (initdb, pg_ctl): apt-get install postgresql"
    return None


@contextlib.contextmanager
def throwaway_server():
    """Start a server in a temporary folder; stop it and delete the folder after."""
    import psycopg

    base = Path(tempfile.mkdtemp(prefix="skllmprob-pg-"))
    port = _free_port()
    admin_password = secrets.token_hex(12)
    password = "pw-" + secrets.token_hex(10)
    try:
        _start(base, port, admin_password)
        admin = f"postgresql://postgres:{admin_password}@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        yield PgServer("127.0.0.1", port, password, admin, base / "log")
    finally:
        with contextlib.suppress(Exception):
            _run([_binary("pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole test session."""
    reason = available()
    if reason:
        pytest.skip(reason)
    with throwaway_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server, request):
    """The URL (with the password) of a fresh database for this test."""
    name = "t_" + secrets.token_hex(6)
    pg_server.create_database(name)
    return pg_server.url(name)
