"""Three real ``nats-server`` processes on loopback, configured by ``deploy/nats/``.

A hub and regional nodes (``fr``, ``es``), each with its own JetStream domain and
store directory; the regions join the hub as leaf nodes with their own
credentials. Every server can be killed and restarted on the same ports and
store, to cut the federation apart and put it back.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.nats import nats_server_binary
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "nats"


class NatsNode:
    """One ``nats-server -c <config>`` with its environment, ports and store."""

    def __init__(self, name: str, config: Path, work_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.config = config
        self.store_dir = work_dir / f"{name}-store"
        self.log_path = work_dir / f"{name}.log"
        self.port = free_port()
        self.monitor_port = free_port()
        self.env = {**env, "NATS_SERVER_NAME": name, "NATS_STORE_DIR": str(self.store_dir)}
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, user: str = "", password: str = "") -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> NatsNode:
        args = [
            nats_server_binary(),
            "-c",
            str(self.config),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            args, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.monitor("healthz", {"js-enabled-only": "true"}) is not None:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout}s: see {self.log_path}")

    def monitor(self, endpoint: str, params: dict[str, str] | None = None) -> Any:
        """A monitoring endpoint's JSON (``None`` unless 200)."""
        response = httpx.get(
            f"http://127.0.0.1:{self.monitor_port}/{endpoint}", params=params, timeout=2.0
        )
        return response.json() if response.status_code == 200 else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._process is None:
            return
        self._process.send_signal(sig)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or said goodbye."""
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Federation:
    """A hub and regional nodes, wired as ``docs/federation.md`` says."""

    def __init__(self, work_dir: Path, regions: tuple[str, ...] = ("fr", "es")) -> None:
        self.work_dir = work_dir
        self.passwords = {
            "sys": secrets.token_hex(12),
            "hub-admin": secrets.token_hex(12),
            "services": secrets.token_hex(12),
            "federation": secrets.token_hex(12),
            **{f"leaf-{r}": secrets.token_hex(12) for r in regions},
        }
        self.leaf_port = free_port()
        hub_env = {
            "NATS_LEAF_PORT": str(self.leaf_port),
            "NATS_SYS_PASSWORD": self.passwords["sys"],
            "NATS_HUB_ADMIN_PASSWORD": self.passwords["hub-admin"],
            # hub.conf names fr and es; every member needs its leaf password.
            **{
                f"NATS_LEAF_{r.upper()}_PASSWORD": self.passwords.get(f"leaf-{r}", "unused-region")
                for r in ("fr", "es", *regions)
            },
        }
        self.hub = NatsNode("hub", DEPLOY / "hub.conf", work_dir, hub_env)
        self.regions = {r: self._region_node(r, DEPLOY) for r in regions}

    def _region_node(self, region: str, config_dir: Path, name: str | None = None) -> NatsNode:
        env = {
            "REGION": region,
            "DIRECTORY_SUBJECTS": f"directory.{region}.*",
            "HUB_LEAF_URL": (
                f"nats-leaf://leaf-{region}:{self.passwords[f'leaf-{region}']}"
                f"@127.0.0.1:{self.leaf_port}"
            ),
            "NATS_SYS_PASSWORD": self.passwords["sys"],
            "NATS_SERVICES_PASSWORD": self.passwords["services"],
            "NATS_FEDERATION_PASSWORD": self.passwords["federation"],
        }
        return NatsNode(name or region, config_dir / "region.conf", self.work_dir, env)

    def start(self) -> Federation:
        self.hub.start()
        for node in self.regions.values():
            node.start()
        for region in self.regions:
            self.wait_leaf(region)
        return self

    def stop(self) -> None:
        for node in (*self.regions.values(), self.hub):
            node.stop()

    def restart_region(self, region: str, config_dir: Path = DEPLOY) -> NatsNode:
        """Stop the region's server and start it again (same store) with another config."""
        self.regions[region].stop()
        node = self._region_node(region, config_dir)
        self.regions[region] = node.start()
        self.wait_leaf(region)
        return node

    # --- addresses ----------------------------------------------------------------------

    @property
    def hub_admin_url(self) -> str:
        return self.hub.url("hub-admin", self.passwords["hub-admin"])

    def federation_url(self, region: str) -> str:
        """The region's FEDERATION account (what matching's link uses)."""
        return self.regions[region].url("federation", self.passwords["federation"])

    def services_url(self, region: str) -> str:
        """The region's APP account (the services), without credentials (no_auth_user)."""
        return self.regions[region].url()

    # --- waiting ------------------------------------------------------------------------

    def leaf_connected(self, region: str) -> bool:
        node = self.regions[region]
        if not (node.running and self.hub.running):
            return False
        leafz = node.monitor("leafz")
        return bool(leafz and leafz.get("leafnodes"))

    def wait_leaf(self, region: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leaf_connected(region):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{region} did not join the hub in {timeout}s")

    def leaf_bytes(self) -> dict[str, tuple[int, int]]:
        """Per leaf user on the hub: (bytes in from the region, bytes out to it)."""
        leafz = self.hub.monitor("leafz") or {}
        out: dict[str, tuple[int, int]] = {}
        for leaf in leafz.get("leafs") or []:
            name = str(leaf.get("name") or leaf.get("remote_server_name") or "?")
            previous = out.get(name, (0, 0))
            out[name] = (
                previous[0] + int(leaf.get("in_bytes", 0)),
                previous[1] + int(leaf.get("out_bytes", 0)),
            )
        return out


def rogue_config_dir(work_dir: Path) -> Path:
    """``deploy/nats/region.conf`` with the region's own permissions thrown wide open.

    What a partner could do to its own server: the hub's rules must still hold.
    """
    rogue = work_dir / "rogue-config"
    rogue.mkdir(exist_ok=True)
    (rogue / "region.conf").write_text((DEPLOY / "region.conf").read_text())
    accounts = (DEPLOY / "region-accounts.conf").read_text()
    start = accounts.index("permissions: {")
    depth, end = 0, start
    for end in range(accounts.index("{", start), len(accounts)):
        depth += {"{": 1, "}": -1}.get(accounts[end], 0)
        if depth == 0:
            break
    wide_open = 'permissions: { publish: ">", subscribe: ">" }'
    opened = accounts[:start] + wide_open + accounts[end + 1 :]
    (rogue / "region-accounts.conf").write_text(opened)
    return rogue
