"""Free loopback ports for test servers.

Two things made a "free" port taken by the time a server bound it: asking the
kernel for port 0 twice in a row can return the same port (a NATS node got it as
both its client and monitoring port, and exited: "address already in use"), and
the kernel hands ports of its ephemeral range to outgoing connections at any time.
So ports come from below the ephemeral range, at random, and never twice in one
test process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_handed_out: set[int] = set()


def _below_ephemeral() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other caller was given."""
    top = _below_ephemeral()
    if top - _LOWEST < 1_000:  # an unusual range: fall back to the kernel's choice
        return _kernel_port()
    for _ in range(200):
        port = random.randrange(_LOWEST, top)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    return _kernel_port()


def _kernel_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
