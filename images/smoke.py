"""Smoke tests of the built images (images/build.sh runs them), in a private network namespace:

- the session image runs as a session pod would: UID 1000, every capability dropped, no new
  privileges, in the pod's own network namespace, with the environment and Secret values the
  pod gets (an env file, owner-only: never a process argument), against `vdi-control serve` on
  the fake cluster. Its entrypoint starts Xvfb, PulseAudio, openbox, xterm and vdi-agent, which
  starts Selkies 2.x; the session goes Running through the real report path, and a real
  Chromium decodes frames from the container's port with the session's credentials, relayed by
  coturn;
- the control-plane image runs `vdi-control migrate` and `vdi-control serve` against a Postgres
  (the embedded one, its socket shared with the container) and a Kubernetes API (the fake one,
  served outside the container and named by a kubeconfig, as a cluster's would be: the image
  does not carry the fake's packages, which the smoke checks), and answers /readyz, and its
  HEALTHCHECK is in the image and passes.

Prints the start times. `python -m images.smoke --control-image I --session-image J [--json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.embedded import EmbeddedPostgres
from bench.selkies_session import (
    IN_NETNS,
    POD_IP,
    POD_NETNS,
    SESSION_PORT,
    selkies_pod,
    set_up_pod_network,
    wait_for,
)
from harness.browser_viewer import READ_STATS, chromium
from harness.network import reexec_in_private_network, set_up_network
from kubefake import write_kubeconfig

CONTAINERS_CONF = Path(__file__).resolve().parent / "containers.conf"


async def podman(*args: str, check: bool = True, timeout_s: float = 120, both: bool = False) -> str:
    """podman's output (in a thread: the fake API answers in this event loop meanwhile)."""
    result = await asyncio.to_thread(
        subprocess.run,
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {args[0]}: {result.stderr.strip()[-2000:]}")
    if both:
        return result.stdout + result.stderr
    if not check and result.returncode != 0:
        return f"exit {result.returncode}: {result.stderr.strip()[-2000:]}"
    return result.stdout.strip()


def env_file(path: Path, env: dict[str, str]) -> Path:
    """The container's environment in an owner-only file (`--env-file`)."""
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items() if "\n" not in v))
    return path


async def session_container(image: str, report: dict[str, Any]) -> None:
    async with selkies_pod({}) as pod:
        # What the pod spec gives the container, less what the image itself sets.
        env = {k: v for k, v in pod.env.items() if k not in ("HOME", "DISPLAY")}
        env["SELKIES_AUDIO_ENABLED"] = "true"
        name = f"vdi-smoke-{secrets.token_hex(4)}"
        started = time.monotonic()
        await podman(
            "run",
            "--detach",
            "--rm",
            f"--name={name}",
            f"--network=ns:/run/netns/{POD_NETNS}",
            "--user=1000:1000",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--shm-size=1g",
            f"--env-file={env_file(pod.workdir / 'session.env', env)}",
            "--pull=never",
            image,
        )
        try:
            inspected = json.loads(await podman("inspect", name))[0]
            report["session_user"] = inspected["Config"]["User"]
            status = await podman("exec", name, "cat", "/proc/1/status")
            report["session_capabilities"] = {
                key: value.strip()
                for key, _, value in (line.partition(":") for line in status.splitlines())
                if key in ("CapPrm", "CapEff", "CapBnd", "NoNewPrivs")
            }
            running = await pod.plane.wait_phase(pod.session_id, {"Running", "Failed"}, 180)
            report["session_running_s"] = round(time.monotonic() - started, 1)
            report["session"] = {
                k: running[k] for k in ("phase", "reason", "streamer", "encoder", "message")
            }
            # the agent's own distribution, not the control plane's
            report["session_distributions"] = await podman(
                "exec",
                name,
                "/opt/vdi/bin/python",
                "-c",
                "import importlib.metadata as m, importlib.util as u;"
                "print(sorted(d.metadata['Name'] for d in m.distributions()"
                " if d.metadata['Name'].startswith('vdi')), u.find_spec('app') is None)",
            )
            processes = await podman("top", name, "user", "pid", "args")
            report["session_processes"] = processes.splitlines()
            url = f"http://{POD_IP}:{SESSION_PORT}/"
            connection = await pod.plane.request("GET", f"/v1/sessions/{pod.session_id}/connection")
            user, password = connection["username"], connection["password"]
            async with httpx.AsyncClient(timeout=5) as http:
                report["session_no_password_status"] = (await http.get(url)).status_code
                turn = (await http.get(f"{url}api/turn", auth=(user, password))).json()
                report["session_turn_users"] = [
                    s["username"] for s in turn["iceServers"] if "username" in s
                ]
            with chromium(user, password) as driver:
                await asyncio.to_thread(driver.get, url)

                async def decoding() -> dict[str, Any] | None:
                    stats = await asyncio.to_thread(driver.execute_async_script, READ_STATS)
                    return stats if (stats.get("frames_decoded") or 0) > 30 else None

                stats = await wait_for("frames decoded from the container", decoding, 60)
                report["session_browser"] = {
                    "frames_decoded": stats.get("frames_decoded"),
                    "fps": stats.get("fps"),
                    "pair": stats.get("pair"),
                }
        except Exception:
            report["session_container_log"] = (await podman("logs", name, check=False, both=True))[
                -6000:
            ]
            raise
        finally:
            stopped = time.monotonic()
            await podman("stop", "--time=20", name, check=False, timeout_s=60)
            report["session_stop_s"] = round(time.monotonic() - stopped, 1)


async def control_container(image: str, report: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="vdi-smoke-db-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", delete_on_stop=True)
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubefake", "--port", "0", stdout=asyncio.subprocess.PIPE
        )
        try:
            assert api.stdout is not None
            api_url = (await asyncio.wait_for(api.stdout.readline(), 30)).decode().strip()
            kube_dir = Path(tmp) / "kube"
            kube_dir.mkdir()
            write_kubeconfig(kube_dir / "config", api_url, "vdi")
            for path in (kube_dir, kube_dir / "config"):  # the container's UID 1000 reads it
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            url = server.url()
            socket_dir = re.search(r"host=([^&]+)", url)
            assert socket_dir is not None
            # The container's user (UID 1000) reaches the socket, not the data files.
            os.chmod(socket_dir[1], 0o711)
            os.chmod(tmp, 0o711)
            settings = env_file(
                Path(tmp) / "control.env",
                {
                    "VDI_DATABASE_URL": url,
                    "VDI_SECRET_KEY": secrets.token_urlsafe(48),
                    "VDI_TURN_SECRET": secrets.token_urlsafe(32),
                    "VDI_BOOTSTRAP_TOKEN": "vdi_smoke-" + secrets.token_urlsafe(32),
                    "VDI_CLUSTER": "kubernetes",
                    "KUBECONFIG": "/kube/config",
                    "VDI_DATA_DIR": "/tmp/vdi",
                },
            )
            common = [
                "--network=host",
                f"--volume={socket_dir[1]}:{socket_dir[1]}",
                f"--volume={kube_dir}:/kube:ro",
                f"--env-file={settings}",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
                "--pull=never",
            ]
            started = time.monotonic()
            fake_packages = await podman(
                "run",
                "--rm",
                "--entrypoint=python",
                *common,
                image,
                "-c",
                "import importlib.util as u; print([m for m in ('kmock', 'kubernetes_validate', "
                "'sortedcontainers') if u.find_spec(m)])",
                timeout_s=60,
            )
            report["control_fake_packages"] = fake_packages.strip()
            await podman("run", "--rm", *common, image, "migrate", timeout_s=120)
            report["control_migrate_s"] = round(time.monotonic() - started, 1)
            name = f"vdi-smoke-control-{secrets.token_hex(4)}"
            started = time.monotonic()
            await podman("run", "--detach", "--rm", f"--name={name}", *common, image)
            try:

                async def ready() -> dict[str, Any] | None:
                    async with httpx.AsyncClient(timeout=2) as http:
                        try:
                            response = await http.get("http://127.0.0.1:8080/readyz")
                        except httpx.HTTPError:
                            return None
                    return dict(response.json()) if response.status_code == 200 else None

                report["control_readyz"] = await wait_for("/readyz", ready, 60)
                report["control_ready_s"] = round(time.monotonic() - started, 1)
                inspected = json.loads(await podman("inspect", name))[0]
                report["control_user"] = inspected["Config"]["User"]
                report["control_healthcheck_config"] = inspected["Config"].get("Healthcheck")
                health = await podman("healthcheck", "run", name, check=False)
                report["control_healthcheck"] = health or "healthy"
                report["control_healthcheck_exit"] = 0 if health in ("", "healthy") else 1
            except Exception:
                report["control_container_log"] = (
                    await podman("logs", name, check=False, both=True)
                )[-6000:]
                raise
            finally:
                await podman("stop", "--time=10", name, check=False, timeout_s=60)
        finally:
            api.terminate()
            await api.wait()
            server.stop()


async def sizes(*images: str) -> dict[str, int]:
    return {
        image: int(await podman("image", "inspect", "--format", "{{.Size}}", image))
        for image in images
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"sizes": await sizes(args.control_image, args.session_image)}
    await control_container(args.control_image, report)
    await session_container(args.session_image, report)
    return report


def check(report: dict[str, Any]) -> list[str]:
    """What a smoke test must see; each miss is a line."""
    problems = []
    if report.get("session", {}).get("phase") != "Running":
        problems.append(f"session not Running: {report.get('session')}")
    if report.get("session_user") != "1000:1000":
        problems.append(f"session user {report.get('session_user')}")
    capabilities = report.get("session_capabilities", {})
    if any(int(capabilities.get(k, "1"), 16) for k in ("CapPrm", "CapEff", "CapBnd")):
        problems.append(f"capabilities left: {capabilities}")
    if capabilities.get("NoNewPrivs") != "1":
        problems.append(f"new privileges allowed: {capabilities}")
    names = " ".join(report.get("session_processes", []))
    for process in ("Xvfb", "pulseaudio", "openbox", "vdi-agent", "selkies"):
        if process not in names:
            problems.append(f"no {process} in the session container")
    if any(line.split()[0] == "root" for line in report.get("session_processes", [])[1:]):
        problems.append("a session process runs as root")
    if report.get("session_no_password_status") != 401:
        problems.append(f"no password: {report.get('session_no_password_status')}")
    if not (report.get("session_browser") or {}).get("frames_decoded"):
        problems.append("Chromium decoded nothing")
    if (report.get("control_readyz") or {}).get("status") != "ok":
        problems.append(f"/readyz: {report.get('control_readyz')}")
    if (report.get("control_readyz") or {}).get("checks", {}).get("cluster") != "ok":
        problems.append(f"the control plane is not on the cluster: {report.get('control_readyz')}")
    if report.get("session_distributions", "").strip() != "['vdi-agent'] True":
        problems.append(
            f"the session image is not the agent's alone: {report.get('session_distributions')}"
        )
    if report.get("control_fake_packages") != "[]":
        problems.append(
            f"the control-plane image has the fake's packages: {report['control_fake_packages']}"
        )
    if not report.get("control_healthcheck_config"):
        problems.append("the control-plane image has no HEALTHCHECK")
    if report.get("control_healthcheck_exit") != 0:
        problems.append(f"HEALTHCHECK failed: {report.get('control_healthcheck_exit')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-image", required=True)
    parser.add_argument("--session-image", required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get(IN_NETNS) != "1":
        reexec_in_private_network(argv, module="images.smoke")
    set_up_network()
    set_up_pod_network()
    report = asyncio.run(run(args))
    problems = check(report)
    if args.json:
        print(json.dumps(report))
    else:
        mb = {image: f"{size / 1e6:.0f} MB" for image, size in report["sizes"].items()}
        print(f"== smoke: sizes {mb}")
        print(
            f"== smoke: control plane: migrate {report['control_migrate_s']} s, /readyz after "
            f"{report['control_ready_s']} s, HEALTHCHECK exit {report['control_healthcheck_exit']}"
        )
        print(
            f"== smoke: session: Running {report['session_running_s']} s after `podman run` "
            f"({report['session']['streamer']}, {report['session']['encoder']}), Chromium "
            f"{report['session_browser']}, stop {report['session_stop_s']} s"
        )
        print(f"== smoke: session capabilities {report['session_capabilities']}")
        for line in report["session_processes"]:
            print(f"   {line}")
    for problem in problems:
        print(f"SMOKE FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
