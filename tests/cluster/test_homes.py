"""Local desktops' homes limited to home_size (issue 27, finding 8): a filesystem image per
home, loop-mounted while a session uses it. A full home is full for its owner only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtimes import homes

pytestmark = pytest.mark.e2e

UID = 2_200_000

FILL = r"""
import errno, sys
written = 0
try:
    with open(sys.argv[1], "wb") as out:
        while written < int(sys.argv[2]):
            out.write(b"x" * 1048576)
            out.flush()
            written += 1048576
except OSError as error:
    print("ENOSPC" if error.errno == errno.ENOSPC else f"error {error.errno}", written)
else:
    print("wrote", written)
"""


def _as_user(*command: str) -> str:
    result = subprocess.run(
        ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    problem = homes.why_no_images()
    if problem:
        pytest.fail(f"homes cannot be images here: {problem}")
    root = Path("/var/tmp") / f"vdi-homes-test-{os.getpid()}-{tmp_path.name}"  # reachable by UID
    root.mkdir(mode=0o755)
    directory = root / "alice"
    yield directory
    homes.detach(directory)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_full_home_is_full_for_its_owner_only(home: Path) -> None:
    assert homes.quantity_bytes("20Mi") == 20 * 2**20
    assert homes.quantity_bytes("5Gi") == 5 * 2**30
    assert homes.quantity_bytes("500M") == 500 * 10**6
    image = homes.attach(home, homes.quantity_bytes("20Mi"), UID)
    assert os.path.ismount(home)
    assert home.stat().st_uid == UID
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    assert image.stat().st_blocks * 512 < 10 * 2**20  # sparse until written
    said = _as_user(sys.executable, "-c", FILL, str(home / "big"), str(64 * 2**20))
    assert said.startswith("ENOSPC"), said
    assert int(said.split()[1]) <= 20 * 2**20
    # the filesystem the data dir is on still has room
    outside = home.parent / "outside"
    outside.write_bytes(b"y" * 2**20)
    assert outside.stat().st_size == 2**20


def test_a_home_keeps_its_data_grows_with_home_size_and_takes_in_a_plain_directory(
    home: Path,
) -> None:
    home.mkdir(mode=0o700)
    (home / "notes.txt").write_text("from before images")  # a plain directory home
    homes.attach(home, homes.quantity_bytes("20Mi"), UID)
    assert (home / "notes.txt").read_text() == "from before images"
    assert not home.with_name("alice.before-image").exists()
    homes.detach(home)
    assert not os.path.ismount(home)
    homes.attach(home, homes.quantity_bytes("48Mi"), UID)  # the template's home_size grew
    assert (home / "notes.txt").read_text() == "from before images"
    said = _as_user(sys.executable, "-c", FILL, str(home / "big"), str(32 * 2**20))
    assert said == f"wrote {32 * 2**20}", said
    # a killed server's mounts are undone at the next start-up
    assert homes.detach_all_under(home.parent) == 1
    assert not os.path.ismount(home)
