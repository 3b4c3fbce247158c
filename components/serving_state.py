"""What `deepgate serve`'s supervisor and its workers share: the state file and the socket.

Kept apart from components/serving_worker.py so that the supervisor, which writes the state
file and binds the socket before it starts any worker, imports nothing heavy on that path.

The state file names the package the workers serve::

    {"version": "7", "package": "/cache/.../v7", "info": {"pipeline": ..., "alias": ...}}
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_state(path: Path, version: str, package: Path, info: Mapping[str, Any]) -> None:
    """Point the workers at a package: written beside, then renamed, so no reader sees half a file."""
    text = json.dumps({"version": str(version), "package": str(package), "info": dict(info)}, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's content, or None when it does not exist (yet).

    Raises:
        ValueError: The file is not a state file (the poller logs it and keeps the current model).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    state = json.loads(text)
    if not isinstance(state, dict) or not {"version", "package"} <= set(state):
        raise ValueError(f"{path} is not a serving state file (needs version and package)")
    return state


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (IPv4 or IPv6 by `host`); raises OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns TCP_NODELAY on for accepted connections only when the
    # listening socket's family is INET/INET6 *and* its proto is IPPROTO_TCP. A socket made
    # with proto 0 (as uvicorn's multi-worker mode does) leaves Nagle on, and each answer then
    # waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
