"""Who listens on a TCP port: the owners (uids) of the LISTEN sockets on it, from the kernel's
own tables (/proc/net/tcp and tcp6), as the reader's user namespace sees them.

The streamer's port is chosen before the streamer binds it. Another local account that binds it
first would be taken for Selkies by a plain health check, and would then receive the desktop's
password (the metrics scrape sends it). The agent trusts the port only while every socket
listening on it is its own user's."""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def listener_uids(port: int, tables: tuple[Path, ...] = TABLES) -> set[int]:
    """The uids owning a socket that listens on `port` (any address); empty when none does."""
    owners: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                owners.add(int(fields[7]))
    return owners


def port_is_ours(port: int) -> bool | None:
    """True: only this user listens on `port`; False: another account does; None: nobody."""
    owners = listener_uids(port)
    if not owners:
        return None
    return owners == {os.getuid()}
