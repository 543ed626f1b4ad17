"""Local desktops' homes, limited to the template's `home_size` (issue 27, finding 8).

On a node the home is a PVC of that size; here, run as root, it is a filesystem image of its
own: a sparse file (`<home>.img` beside the directory, hidden from desktops with the data dir)
holding an ext4 filesystem of `home_size`, loop-mounted at the home's directory while a session
uses it (nosuid, nodev). A user who fills it gets "No space left on device" in their own home,
and nobody else notices: the data dir, the database and the other homes are on other
filesystems. A template whose `home_size` grew gets a bigger filesystem at its next mount
(e2fsck, resize2fs); one that shrank keeps the larger (data is never cut). A plain directory
home from a run without images is moved into the image on its first mount.

Mounts a killed server left are unmounted at the next start-up."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from app.runtimes.sandbox import system_tool

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kMGTPE]i?)?$")
MIN_BYTES = 16 * 2**20  # ext4's smallest useful filesystem with a journal


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity (`5Gi`, `500M`, `1073741824`) in bytes."""
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"not a storage quantity: {quantity!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit or ""])


def why_no_images() -> str:
    """Empty when homes can be images here; else why not."""
    if os.geteuid() != 0:
        return "not root"
    for name in ("mkfs.ext4", "mount", "umount", "resize2fs", "e2fsck"):
        if system_tool(name) is None:
            return f"{name} not found (apt-get install e2fsprogs mount)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    return ""


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {why[0]}")


def mounted(directory: Path) -> bool:
    return os.path.ismount(directory)


def attach(directory: Path, size_bytes: int, uid: int) -> Path:
    """Mount the home image for `directory` (made, or grown, to `size_bytes`), owned by `uid`;
    returns the image's path. Already mounted: kept as it is."""
    image = directory.with_name(directory.name + ".img")
    if mounted(directory):
        return image
    size = max(size_bytes, MIN_BYTES)
    if not image.exists():
        descriptor = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(descriptor)
        os.truncate(image, size)  # sparse: blocks are taken as the user writes
        _run(
            system_tool("mkfs.ext4") or "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "vdi-home",
            "-E",
            f"root_owner={uid}:{uid}",
            str(image),
        )
    elif image.stat().st_size < size:
        os.truncate(image, size)
        _run(system_tool("e2fsck") or "e2fsck", "-f", "-p", str(image))
        _run(system_tool("resize2fs") or "resize2fs", "-f", str(image))
    earlier = None
    if directory.is_dir() and any(directory.iterdir()):
        earlier = directory.with_name(directory.name + ".before-image")
        directory.rename(earlier)  # a plain directory home: moved into the image below
    directory.mkdir(mode=0o700, exist_ok=True)
    _run(
        system_tool("mount") or "mount",
        "-o",
        "loop,nosuid,nodev,noatime",
        str(image),
        str(directory),
    )
    if earlier is not None:
        _run("cp", "-a", f"{earlier}/.", str(directory))
        shutil.rmtree(earlier)
    os.chown(directory, uid, uid)
    directory.chmod(0o700)
    return image


def detach(directory: Path) -> None:
    """Unmount the home at `directory` (lazily, should something still hold it)."""
    if not mounted(directory):
        return
    umount = system_tool("umount") or "umount"
    try:
        _run(umount, str(directory))
    except RuntimeError:
        _run(umount, "-l", str(directory))


def detach_all_under(root: Path) -> int:
    """Unmount every home under `root` (a killed server's); how many there were."""
    prefix = str(root.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return 0
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    found = sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)
    for point in found:
        detach(Path(point))
    return len(found)
