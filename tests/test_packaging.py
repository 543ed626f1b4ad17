"""The two distributions: the session images install the agent's own wheel (agent/pyproject.toml),
which holds the agent alone, whole, with the dependencies its code imports."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent"
# import name -> distribution, for the agent's third-party imports
DISTRIBUTIONS = {"prometheus_client": "prometheus-client"}


def _build(tmp_path: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path), str(AGENT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("vdi_agent-*.whl")
    return zipfile.ZipFile(wheel)


def _third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in AGENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {name.split(".")[0] for name in names}
    # gi: Debian's python3-gi; selkies: imported only by streamers/selkies_live.py, which
    # Selkies' own Python runs
    own = ("agent", "gi", "selkies")
    return {name for name in found if name not in stdlib and name not in own}


def test_the_agents_wheel_is_every_agent_module_and_nothing_of_the_control_plane(
    tmp_path: Path,
) -> None:
    wheel = _build(tmp_path)
    modules = {name for name in wheel.namelist() if not name.startswith("vdi_agent-")}
    wanted = {f"agent/{path.relative_to(AGENT).as_posix()}" for path in AGENT.rglob("*.py")}
    assert modules == wanted
    metadata = Parser().parsestr(
        wheel.read(next(n for n in wheel.namelist() if n.endswith("/METADATA"))).decode()
    )
    required = {
        line.split(">")[0].split("=")[0].strip() for line in metadata.get_all("Requires-Dist")
    }
    imported = {DISTRIBUTIONS.get(name, name) for name in _third_party_imports()}
    assert required == imported, "agent/pyproject.toml's dependencies are what agent/ imports"
    entry_points = wheel.read(
        next(n for n in wheel.namelist() if n.endswith("/entry_points.txt"))
    ).decode()
    assert "vdi-agent = agent.cli:main" in entry_points
