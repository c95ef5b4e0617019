"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary folder, a loopback port.

`make test-slow` installs the server (`apt-get install postgresql`, as root, as CI runs). Postgres
refuses to run as root, so as root the server runs as `nobody` in a folder handed to it; as any
other user it runs as that user. Every database is dropped with the server at the end.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

SERVER_USER = "nobody"  # as root: an account that exists on every Debian machine
INSTALL_HINT = (
    "apt-get install postgresql (make test-slow does it as root), or set TUNEGRAPH_TEST_POSTGRES_URL"
)


def binaries() -> Path | None:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its admin URL (`postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres`)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError(f"no PostgreSQL server under /usr/lib/postgresql: {INSTALL_HINT}")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is root-only, and the server user must reach it.
    root = Path(tempfile.mkdtemp(prefix="tunegraph-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
    data, log, port = root / "data", root / "server.log", _free_port()
    run = lambda *cmd: subprocess.run(_as_server_user([str(c) for c in cmd]), check=True,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # Loopback TCP only; the Unix socket goes into the temporary folder, not /run/postgresql.
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
        try:
            run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as err:
            raise RuntimeError(
                f"PostgreSQL did not start: {err.stderr.strip()} {log.read_text()[-2000:]}"
            ) from err
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").is_file():
            run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scratch_databases(server_url: str, *stores: str) -> Iterator[dict[str, str]]:
    """One fresh database per store (e.g. "mlflow", "dagster"), dropped afterwards; store -> URL.

    Dagster and MLflow cannot share one database: both keep their schema revision in an
    `alembic_version` table, and Dagster fails with "Can't locate revision identified by ..." on
    MLflow's (measured). The driver is psycopg2, the one the `postgres` extra installs: SQLAlchemy
    2.1 maps a bare `postgresql://` to psycopg 3, with which Dagster's `NOTIFY run_events, $1` is a
    syntax error.
    """
    server = sa.make_url(server_url).set(drivername="postgresql+psycopg2")
    names = {store: f"tunegraph_test_{store}_{uuid.uuid4().hex[:8]}" for store in stores}
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield {
            store: server.set(database=name).render_as_string(hide_password=False)
            for store, name in names.items()
        }
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))  # MLflow keeps its pool open
        admin.dispose()
