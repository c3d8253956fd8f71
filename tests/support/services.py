"""Run passerelle's services as real subprocesses (their console scripts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

#: How long a service may take to come up: imports alone take seconds, and several
#: processes starting at once on a busy 2-core machine take much longer.
STARTUP_SECONDS = float(os.environ.get("PASSERELLE_TEST_STARTUP_SECONDS", "180"))

SCRIPTS = {
    "ingest": "passerelle-ingest",
    "matching": "passerelle-matching",
    "bluesky_sender": "passerelle-bluesky-sender",
    "mastodon_sender": "passerelle-mastodon-sender",
}


class ServiceProcess:
    """One service process with its own port, data directory and log file."""

    def __init__(
        self, service: str, nats_url: str, work_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.service = service
        self.port = free_port()
        self.work_dir = work_dir
        self.log_path = work_dir / f"{service}.log"
        self.env = {
            **os.environ,
            "PASSERELLE_ENV": "dev",
            "PASSERELLE_NATS_URL": nats_url,
            "PASSERELLE_DATA_DIR": str(work_dir / "data"),
            "PASSERELLE_HTTP_PORT": str(self.port),
            "PASSERELLE_NATS_CONNECT_RETRY_SECONDS": "0.3",
            **(env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        script = Path(sys.executable).parent / SCRIPTS[self.service]
        log = self.log_path.open("ab")
        self._process = subprocess.Popen([str(script)], env=self.env, stdout=log, stderr=log)
        return self

    def wait_http(self, path: str = "/healthz", timeout: float = STARTUP_SECONDS) -> None:
        """Wait until ``path`` answers 200 (``/readyz``: connected and migrated)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.service} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.base_url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.service} {path} not 200 in {timeout}s: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self._process is None:
            return None
        self._process.send_signal(sig)
        try:
            code = self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._process = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        self.stop(signal.SIGKILL)
