"""Local desktops' isolation: an account of the user's own, and a sandbox per process.

Run as root (a service's usual way on a desktop host), the local runtime gives each user an
unprivileged account of their own: a uid from `VDI_LOCAL_UID_BASE` up, one per user name,
kept in `<data dir>/desktops/accounts.json` so a kept home keeps its owner. It needs no entry in
/etc/passwd: nothing logs in as it. Every process of a desktop (Xvfb, openbox, the xterm, the
agent and through it Selkies) runs as that uid inside bubblewrap (`bwrap`, Debian's
`bubblewrap`), dropped to it by `setpriv` (util-linux) with no capability left and no way to
gain one (no_new_privs):

- its own PID namespace: it sees only its own processes, not the server's environment nor
  another desktop's agent; when the sandbox's first process ends, the kernel ends every process
  in it, so nothing a user starts (`setsid`, `env -i`, double forks) outlives the session;
- the system read-only (`/` bound read-only), a /tmp of the session's own (where its X socket
  is), a fresh /dev and /proc, an empty /run (no host sockets);
- the data dir hidden (an empty tmpfs over it: no database socket, no server key, no other
  home); the user's home is bound in at /home/user (the session pod's path) and the session's
  directory at /run/desktop;
- the X display takes only the session's cookie (see local.py), and the fake Kubernetes API
  only the server's token (see simulated.py).

Without root (or without bubblewrap, or where the kernel refuses unprivileged user namespaces)
local desktops are single-user: every desktop runs as the server's account, and the server says
so loudly at start-up and in /readyz. `VDI_LOCAL_ISOLATION=sandbox` refuses to start instead.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOME_INSIDE = "/home/user"  # where the user's home is, inside (the session pod's path too)
SESSION_INSIDE = "/run/desktop"  # the session's directory (its X authority), inside
GPU_DEVICES = ("/dev/dri", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def system_tool(name: str) -> str | None:
    """On PATH, else in the system directories (a service's PATH may be minimal)."""
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def why_not_isolated(probe_uid: int) -> str:
    """Empty when desktops can be isolated here; else why not (said at start-up)."""
    if os.geteuid() != 0:
        return "the server does not run as root, so it cannot give desktops accounts of their own"
    bwrap, setpriv = system_tool("bwrap"), system_tool("setpriv")
    if bwrap is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if setpriv is None:
        return "setpriv is not installed (apt-get install util-linux)"
    probe = Sandbox(probe_uid, hidden=(), home=None, session=None, tmp=None)
    try:
        result = subprocess.run(
            probe.wrap(["true"]), capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap does not run here ({error})"
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return f"bubblewrap cannot make a sandbox here ({why})"
    return ""


@dataclass(frozen=True)
class Sandbox:
    """How to run one desktop process as `uid` in its own namespaces. Inside, the user's home
    is HOME_INSIDE, the session's directory SESSION_INSIDE and its own directory `tmp` is
    /tmp; /home and /run are empty but for them, and each path in `hidden` is an empty tmpfs."""

    uid: int
    hidden: tuple[str, ...]
    home: str | None  # host path of the user's home
    session: str | None  # host path of the session's directory
    tmp: str | None  # host path of the session's /tmp (owned by `uid`)
    # what the desktop runs from (Python, this code, Selkies): made reachable read-only where
    # a directory above it is closed to other accounts (a checkout or pyenv under /root)
    runtime: tuple[str, ...] = field(default_factory=tuple)

    def wrap(self, command: list[str]) -> list[str]:
        """bubblewrap, run by root, makes the namespaces and mounts (so paths only root can
        reach, such as a data dir under /root, can be bound in), then setpriv inside drops to
        `uid` with no capability and no way to gain privileges (no_new_privs: setuid programs
        do not elevate) before `command` runs."""
        setpriv, bwrap = system_tool("setpriv") or "setpriv", system_tool("bwrap") or "bwrap"
        wrapped = [
            bwrap,
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "desktop",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        for device in GPU_DEVICES + tuple(sorted(glob.glob("/dev/nvidia[0-9]*"))):
            wrapped += ["--dev-bind-try", device, device]
        for path in self.hidden:
            wrapped += ["--tmpfs", path]
        wrapped += ["--bind", self.tmp, "/tmp"] if self.tmp is not None else ["--tmpfs", "/tmp"]
        wrapped += ["--perms", "0755", "--tmpfs", "/home", "--perms", "0755", "--tmpfs", "/run"]
        # what it runs from, even where that is under a directory replaced just above
        wrapped += reach(self.runtime, ("/tmp", "/home", "/run", *self.hidden))
        if self.session is not None:
            wrapped += ["--bind", self.session, SESSION_INSIDE]
        if self.home is not None:
            wrapped += ["--bind", self.home, HOME_INSIDE, "--chdir", HOME_INSIDE]
        drop = [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
        return [*wrapped, "--", *drop, *command]


def _closed(directory: Path) -> bool:
    """Other accounts cannot traverse `directory`."""
    try:
        return not directory.stat().st_mode & 0o001
    except OSError:
        return True


def reach(paths: tuple[str, ...], shadowed: tuple[str, ...] = ()) -> list[str]:
    """bubblewrap arguments, to come after the sandbox's own mounts (`shadowed`: /tmp, /home,
    /run, the hidden data dir), that make each of `paths` reachable read-only by any account:
    a path under a shadowed directory is bound back in; a path below a directory closed to
    other accounts gets that directory masked by an empty tmpfs (its other contents stay
    hidden) and is bound in; open directories lead down to each."""
    anchors: dict[Path, list[Path]] = {}
    masks: set[Path] = set()
    roots = [Path(s) for s in shadowed]
    wanted = {Path(p) for p in paths}
    for path in sorted(wanted):
        if any(other in path.parents for other in wanted):
            continue  # inside another of `paths`: bound with it
        under = [r for r in roots if r == path or r in path.parents]
        if under:
            anchor = max(under, key=lambda r: len(r.parts))
        else:
            blocked = next((a for a in reversed(path.parents[:-1]) if _closed(a)), None)
            if blocked is None:
                continue  # reachable as it is
            anchor = blocked
            masks.add(blocked)
        anchors.setdefault(anchor, []).append(path)
    args: list[str] = []
    for mask in sorted(masks, key=lambda p: len(p.parts)):
        if not any(other in mask.parents for other in masks):
            args += ["--perms", "0755", "--tmpfs", str(mask)]
    made: set[Path] = set()
    for anchor in sorted(anchors, key=lambda p: len(p.parts)):
        for path in sorted(set(anchors[anchor])):
            for directory in reversed(path.parents):
                if anchor in directory.parents and directory not in made:
                    made.add(directory)
                    args += ["--perms", "0755", "--dir", str(directory)]
            args += ["--ro-bind", str(path), str(path)]
    return args


def runtime_paths(*programs: str) -> tuple[str, ...]:
    """The trees a desktop runs from: this Python (its installation and its virtualenv), this
    code, and each program's own tree and interpreter (a console script's shebang)."""
    found = [Path(os.path.realpath(sys.executable)).parents[1], Path(sys.prefix)]
    spec = importlib.util.find_spec("agent")
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).resolve().parents[1])
    for program in programs:
        real = Path(os.path.realpath(program))
        found.append(real.parents[1])
        try:
            first = real.read_bytes()[:256].split(b"\n", 1)[0]
        except OSError:
            continue
        if first.startswith(b"#!"):
            interpreter = first[2:].strip().split(b" ")[0].decode(errors="replace")
            found.append(Path(os.path.realpath(interpreter)).parents[1])
    unique = dict.fromkeys(str(p) for p in found if str(p) != "/")
    return tuple(unique)


class Accounts:
    """One uid per user name, from `base` up, kept in `path` (0600) across restarts."""

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        try:
            self._uids: dict[str, int] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._uids = {}

    def uid_for(self, user: str) -> int:
        uid = self._uids.get(user)
        if uid is None:
            uid = max(self._uids.values(), default=self.base - 1) + 1
            self._uids[user] = uid
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump(self._uids, out)
            temporary.replace(self.path)
        return uid


def give(path: Path, uid: int) -> None:
    """`path` and everything under it owned by `uid` (a home kept from a single-user run, or
    made by root, becomes the user's account's)."""
    if path.stat().st_uid == uid and path.stat().st_gid == uid:
        return
    os.chown(path, uid, uid)
    for root, directories, files in os.walk(path):
        for name in directories + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
