"""Local desktops (`VDI_CLUSTER=local`): the in-process fake Kubernetes API, whose kubelet runs
each session pod as processes on this machine instead of pretending to.

The reconciler, the API and the lifecycle are the ones a cluster gets: they create the same
Secret, Pod and Service through the same client. What a container runtime would do, this does:
when a pod is admitted it reserves a free port on `VDI_LOCAL_ADDRESS` and annotates the pod with
the desktop's address (the session's `url`); when the kubelet starts the pod it starts, in one
process group of their own, Xvfb on a free display (`-displayfd`), a PulseAudio of the session's
own on a socket in the session's directory (`PULSE_SERVER`, never the host's sound server), the
desktop (openbox and an xterm where installed) and the real `vdi-agent run` with the pod's
environment (the Secret's values resolved, nothing of this server's own environment), which
checks, starts and supervises the real Selkies 2.x on that port and reports to this server. The
user's home is a directory under the data dir, kept across sessions (the PVC's meaning); a
template without a persistent home gets one that goes with the pod.

Crashes map as on a node: Selkies dying is the agent's business (restarted, `StreamerRestarted`;
`STREAMER_FAILED` when it keeps dying); Xvfb or the agent dying is the container dying: the pod
says `CrashLoopBackOff` with what exited, and the session fails with that reason. A deleted pod
stays until every process of its session is gone (SIGTERM to the group, SIGKILL after the grace,
then anything still carrying the session's marker). Every process dies with this server
(PR_SET_PDEATHSIG): local desktops do not outlive `vdi-control serve`, whose restart ends their
sessions (`ControlPlaneRestarted`) and stops any process a previous run left behind. The sweep
finds processes marked with a session this runtime does not run and stops them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import structlog

from app.cluster import manifests
from app.config import Settings
from app.runtimes import homes
from app.runtimes.sandbox import (
    HOME_INSIDE,
    SESSION_INSIDE,
    SYSTEM_PATH,
    Accounts,
    Sandbox,
    give,
    runtime_paths,
    system_tool,
    why_not_isolated,
)

if TYPE_CHECKING:
    from kubefake import FakeKubernetes

log = structlog.get_logger("vdi.local")

SESSION_MARKER = "VDI_LOCAL_SESSION"  # in every process of a session: what the sweep looks for
RUNTIME_MARKER = "VDI_LOCAL_RUNTIME"  # the desktops directory: another data dir's are not ours
SCREEN = "1920x1080x24"
SOUND_TIMEOUT_S = 15
DISPLAY_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0
AGENT_LOG_TAIL = 3
_PR_SET_PDEATHSIG = 1
# The pod's settings that mean nothing here (a PulseAudio socket in the image, the TURN relay
# when none is configured) are dropped; these are the names.
TURN_ENV = (
    "SELKIES_TURN_HOST",
    "SELKIES_TURN_PORT",
    "SELKIES_TURN_PROTOCOL",
    "SELKIES_TURN_USERNAME",
    "SELKIES_TURN_PASSWORD",
    "SELKIES_STUN_HOST",
    "SELKIES_STUN_PORT",
)


def sound_server(pulseaudio: str, directory: str) -> tuple[list[str], dict[str, str]]:
    """A desktop's own PulseAudio: the command and the environment that keep its socket
    (`directory`/native), state and runtime files in `directory`, and nothing of the host's."""
    command = [
        pulseaudio,
        "--daemonize=no",
        "--use-pid-file=no",
        "--exit-idle-time=-1",
        "--disable-shm=yes",  # its clients share no memory segment with other accounts
        "-n",  # no default.pa: no hardware, no X11 or D-Bus modules, nothing of the host's
        f"--load=module-native-protocol-unix socket={directory}/native auth-anonymous=1",
    ]
    names = ("PULSE_RUNTIME_PATH", "PULSE_STATE_PATH", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
    return command, dict.fromkeys(names, directory)


@dataclass(frozen=True)
class Tools:
    """What local desktops run, as found on this machine."""

    xvfb: str
    selkies: str
    openbox: str | None
    xterm: str | None
    no_gpu: str  # empty: nvidia-smi works and sessions get the host's GPU; else why not
    pulseaudio: str | None = None  # none installed: desktops without sound (VDI_AUDIO=false)


def find_selkies(settings: Settings) -> str | None:
    if settings.local_selkies:
        path = Path(settings.local_selkies)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    beside = Path(sys.executable).parent / "selkies"  # pip install 'vdi-control[desktop]'
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("selkies")


def missing_tools(settings: Settings) -> list[str]:
    """What local desktops need and this machine lacks, each with how to get it."""
    missing = []
    if system_tool("Xvfb") is None:
        missing.append("Xvfb (apt-get install xvfb)")
    if find_selkies(settings) is None:
        where = settings.local_selkies or "beside this Python or on PATH"
        missing.append(f"selkies at {where} (pip install 'vdi-control[desktop]')")
    return missing


def gpu_on_host() -> str:
    """Empty when nvidia-smi lists a GPU here; else why not (said in the sessions' checks)."""
    program = system_tool("nvidia-smi")
    if program is None:
        return "no GPU on this host (nvidia-smi not found)"
    try:
        result = subprocess.run(
            [program, "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no usable GPU on this host (nvidia-smi: {error})"
    if result.returncode != 0 or "GPU" not in result.stdout:
        why = (result.stderr or result.stdout).strip().splitlines()[-1:] or [
            f"exit {result.returncode}"
        ]
        return f"no usable GPU on this host (nvidia-smi: {why[0]})"
    return ""


def find_tools(settings: Settings) -> Tools:
    xvfb, selkies = system_tool("Xvfb"), find_selkies(settings)
    if xvfb is None or selkies is None:
        raise RuntimeError("local desktops need " + ", ".join(missing_tools(settings)))
    return Tools(
        xvfb,
        selkies,
        system_tool("openbox"),
        system_tool("xterm"),
        gpu_on_host(),
        system_tool("pulseaudio"),
    )


def _die_with_parent(process_group: int | None) -> Any:
    """In the child before exec: lead a new process group (None) or join the session's (a
    group is joined only within one's own session: hence a group, not setsid), and SIGTERM
    when this server dies, even by SIGKILL."""

    def prepare() -> None:
        os.setpgid(0, process_group or 0)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return prepare


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """The exit status, awaited without a thread (a pidfd is readable once the child exits)."""
    if process.poll() is not None:  # reaped already: its pid may be another's by now
        return int(process.returncode)
    loop = asyncio.get_running_loop()
    descriptor = os.pidfd_open(process.pid)
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(descriptor, ready)
    try:
        await done
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)
    return process.wait()


async def _read_display(descriptor: int, xvfb: subprocess.Popen[bytes]) -> str:
    """The display number Xvfb writes to `-displayfd` once it accepts clients."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    done: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        chunk = os.read(descriptor, 64)
        if done.done():
            return
        if not chunk:
            done.set_exception(RuntimeError(f"Xvfb exited before it had a display ({xvfb.poll()})"))
            return
        received.extend(chunk)
        if received.endswith(b"\n"):
            done.set_result(":" + received.decode().strip())

    loop.add_reader(descriptor, readable)
    try:
        return await asyncio.wait_for(done, DISPLAY_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"Xvfb gave no display within {DISPLAY_TIMEOUT_S:g} s") from None
    finally:
        loop.remove_reader(descriptor)


XAUTH_FAMILY_WILD = 0xFFFF
XAUTH_COOKIE = b"MIT-MAGIC-COOKIE-1"


def write_xauthority(path: Path, cookie: bytes) -> Path:
    """An X authority file (libXau's format) with one MIT-MAGIC-COOKIE-1 entry for any address
    and display (FamilyWild, no display number): Xvfb reads it with -auth, and the session's
    own clients with XAUTHORITY. 0600, in the session's 0700 directory."""

    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    entry = XAUTH_FAMILY_WILD.to_bytes(2, "big") + field(b"") + field(b"")
    entry += field(XAUTH_COOKIE) + field(cookie)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(entry)
    return path


@dataclass
class Desktop:
    """One session pod's processes."""

    uid: str
    namespace: str
    name: str
    session_id: str
    directory: Path
    port: int
    pgid: int = 0
    display: str = ""
    pulse_server: str = ""  # its PulseAudio (`unix:<socket>` as its processes see it), if any
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sandbox: Sandbox | None = None  # when isolated: its account, home and directories
    mounted_home: Path | None = None  # its home's filesystem image is mounted there
    stopping: bool = False
    monitor: asyncio.Task[None] | None = None

    def inside(self, path: Path) -> str:
        """`path` as the desktop's processes see it (in the sandbox, home and the session's
        directory are elsewhere)."""
        if self.sandbox is None:
            return str(path)
        for host, inside in (
            (self.sandbox.home, HOME_INSIDE),
            (self.sandbox.session, SESSION_INSIDE),
        ):
            if host is not None and (path == Path(host) or Path(host) in path.parents):
                return str(Path(inside) / path.relative_to(host))
        return str(path)


class LocalDesktops:
    """The container runtime behind the fake API's kubelet: see the module's docstring."""

    def __init__(self, settings: Settings, tools: Tools) -> None:
        self.settings = settings
        self.tools = tools
        self.root = settings.data_dir.resolve() / "desktops"
        self.fake: FakeKubernetes | None = None
        self._ports: dict[str, int] = {}  # pod uid -> reserved port
        self._desktops: dict[str, Desktop] = {}  # pod uid -> its processes
        self._starts: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # decided in start(): isolated (an account and a sandbox per desktop), or single-user
        self.isolated = False
        self.single_user_reason = "not started"
        self.home_images = False  # homes limited to home_size (app.runtimes.homes), as root
        self.accounts = Accounts(self.root / "accounts.json", settings.local_uid_base)
        self._runtime = runtime_paths(tools.selkies)

    # --- the fake kubelet's hooks -------------------------------------------------------------

    def admitted(self, pod: dict[str, Any]) -> None:
        """A pod is being created: reserve its port and say where its desktop will be."""
        uid = pod["metadata"]["uid"]
        port = self._free_port()
        self._ports[uid] = port
        host = self.settings.local_address
        url_host = f"[{host}]" if ":" in host else host
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations[manifests.LOCAL_URL] = f"http://{url_host}:{port}/"

    async def pod_running(self, pod: dict[str, Any]) -> None:
        """The kubelet started the pod: start its processes (a failure is the container's)."""
        uid = pod["metadata"]["uid"]
        task = asyncio.current_task()
        assert task is not None
        self._starts[uid] = task
        try:
            await self._start(pod)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("local desktop did not start", pod=pod["metadata"]["name"])
            desktop = self._desktops.get(uid)
            if desktop is not None:
                await self._kill(desktop)
                await self._release_home(desktop)
            await self._container_exited(pod, None, f"the local desktop did not start: {error}")
        finally:
            self._starts.pop(uid, None)

    async def pod_terminating(self, pod: dict[str, Any]) -> None:
        """The pod is being deleted: it stays until all its processes are gone."""
        uid = pod["metadata"]["uid"]
        start = self._starts.get(uid)
        if start is not None:
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        desktop = self._desktops.pop(uid, None)
        if desktop is not None:
            await self._kill(desktop)
            await self._release_home(desktop)  # before its directory goes (an emptyDir's image)
            self._forget(desktop)
        self._ports.pop(uid, None)

    # --- start --------------------------------------------------------------------------------

    def _free_port(self) -> int:
        family = socket.AF_INET6 if ":" in self.settings.local_address else socket.AF_INET
        for _ in range(100):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((self.settings.local_address, 0))
                port = int(probe.getsockname()[1])
            if port not in self._ports.values():
                return port
        raise RuntimeError("no free port")

    def _environment(self, pod: dict[str, Any], desktop: Desktop, home: Path) -> dict[str, str]:
        """The pod's environment, its Secret's values resolved, fitted to this machine: none of
        this server's own environment (its keys) reaches the desktop."""
        assert self.fake is not None
        container = pod["spec"]["containers"][0]
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef") or {}
            secret = self.fake.find("secrets", desktop.namespace, ref.get("name", ""))
            if secret is None or ref.get("key") not in (secret.get("data") or {}):
                raise RuntimeError(f"secret {ref.get('name')!r} has no key {ref.get('key')!r}")
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        env.pop("PULSE_SERVER", None)
        env.update(
            {
                "DISPLAY": desktop.display,
                "XAUTHORITY": desktop.inside(desktop.directory / "Xauthority"),
                "HOME": desktop.inside(home),
                "USER": "user",
                "LANG": "C.UTF-8",
                "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
                "SELKIES_PORT": str(desktop.port),
                "VDI_LISTEN_ADDR": self.settings.local_address,
                "VDI_SELKIES_COMMAND": self.tools.selkies,
                SESSION_MARKER: desktop.session_id,
                RUNTIME_MARKER: str(self.root),
            }
        )
        if desktop.pulse_server:
            env["PULSE_SERVER"] = desktop.pulse_server
        else:  # no sound server on this machine: nothing to stream, whatever the template says
            env["VDI_AUDIO"] = "false"
        if not self.settings.turn_enabled:
            for name in TURN_ENV:
                env.pop(name, None)
            env["VDI_TURN"] = "none"
        if self.tools.no_gpu and int(env.get("VDI_GPU") or 0) > 0:
            env["VDI_NO_GPU"] = self.tools.no_gpu
        return env

    def _home_size(self, pod: dict[str, Any]) -> int | None:
        """The home's size in bytes: its PVC's request, or its emptyDir's limit."""
        volume = {v.get("name"): v for v in pod["spec"].get("volumes") or []}.get("home", {})
        quantity = (volume.get("emptyDir") or {}).get("sizeLimit")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and self.fake is not None:
            found = self.fake.find("persistentvolumeclaims", pod["metadata"]["namespace"], claim)
            requests = ((found or {}).get("spec") or {}).get("resources", {}).get("requests", {})
            quantity = requests.get("storage")
        try:
            return homes.quantity_bytes(str(quantity)) if quantity else None
        except ValueError:
            return None

    async def _release_home(self, desktop: Desktop) -> None:
        if desktop.mounted_home is not None:
            await asyncio.to_thread(homes.detach, desktop.mounted_home)
            desktop.mounted_home = None

    def _home(self, pod: dict[str, Any], desktop: Desktop) -> Path:
        """The user's directory, kept (a PVC), or the pod's own (an emptyDir)."""
        volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        user = str((pod["metadata"].get("labels") or {}).get(manifests.USER_LABEL, ""))
        if "persistentVolumeClaim" in volumes.get("home", {}) and user:
            home = self.root / "homes" / user
        else:
            home = desktop.directory / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return home

    def _spawn(
        self, desktop: Desktop, what: str, command: list[str], env: dict[str, str], **options: Any
    ) -> subprocess.Popen[bytes]:
        leader = desktop.pgid == 0
        if desktop.sandbox is not None:
            command = desktop.sandbox.wrap(command)
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(None if leader else desktop.pgid),
            **options,
        )
        if leader:
            desktop.pgid = process.pid
        desktop.processes[what] = process
        return process

    async def _start(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        uid = metadata["uid"]
        session_id = (metadata.get("labels") or {}).get(manifests.SESSION_ID_LABEL, "")
        directory = self.root / "sessions" / session_id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        port = self._ports.get(uid) or self._free_port()
        desktop = Desktop(uid, metadata["namespace"], metadata["name"], session_id, directory, port)
        self._desktops[uid] = desktop
        home = self._home(pod, desktop)
        if self.isolated:
            user = str((metadata.get("labels") or {}).get(manifests.USER_LABEL, "")) or session_id
            account = self.accounts.uid_for(user)
            tmp = directory / "tmp"
            tmp.mkdir(mode=0o700, exist_ok=True)
            for owned in (directory, tmp, home):
                await asyncio.to_thread(give, owned, account)
            size = self._home_size(pod)
            if self.home_images and size is not None:
                await asyncio.to_thread(homes.attach, home, size, account)
                desktop.mounted_home = home
            desktop.sandbox = Sandbox(
                account,
                hidden=(str(self.settings.data_dir.resolve()),),  # self.root is inside it
                home=str(home),
                session=str(directory),
                tmp=str(tmp),
                runtime=self._runtime,
            )
        base = {
            "PATH": SYSTEM_PATH,
            "HOME": desktop.inside(home),
            "LANG": "C.UTF-8",
            SESSION_MARKER: session_id,
            RUNTIME_MARKER: str(self.root),
        }
        # X authorization: a cookie of this session's own, so no other local client can watch
        # the screen or type into it (the display's socket is reachable by every account).
        authority = write_xauthority(desktop.directory / "Xauthority", secrets.token_bytes(16))
        if desktop.sandbox is not None:
            os.chown(authority, desktop.sandbox.uid, desktop.sandbox.uid)
        base["XAUTHORITY"] = desktop.inside(authority)
        read_end, write_end = os.pipe()
        try:
            xvfb = self._spawn(
                desktop,
                "Xvfb",
                [self.tools.xvfb, "-displayfd", str(write_end), "-screen", "0", SCREEN]
                + ["-nolisten", "tcp", "-auth", desktop.inside(authority)],
                base,
                pass_fds=(write_end,),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(write_end)
            write_end = -1
            desktop.display = await _read_display(read_end, xvfb)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        base["DISPLAY"] = desktop.display
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": home}
        if self.tools.pulseaudio:
            desktop.pulse_server = await self._start_sound(desktop, base, quiet)
            base["PULSE_SERVER"] = desktop.pulse_server
        if self.tools.openbox:
            self._spawn(desktop, "openbox", [self.tools.openbox], base, **quiet)
        if self.tools.xterm:
            terminal = [self.tools.xterm, "-geometry", "100x32+60+60", "-title", "desktop"]
            self._spawn(desktop, "xterm", terminal, base, **quiet)
        env = self._environment(pod, desktop, home)
        log_path = directory / "agent.log"
        descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "ab") as agent_log:
            self._spawn(
                desktop,
                "vdi-agent",
                [sys.executable, "-c", "from agent.cli import main; main()", "run"],
                env,
                stdout=agent_log,
                stderr=subprocess.STDOUT,
                cwd=home,
            )
        desktop.monitor = asyncio.create_task(self._monitor(pod, desktop))
        log.info(
            "local desktop started",
            session_id=session_id,
            display=desktop.display,
            port=desktop.port,
            pgid=desktop.pgid,
            agent_log=str(log_path),
        )

    async def _start_sound(
        self, desktop: Desktop, base: dict[str, str], quiet: dict[str, Any]
    ) -> str:
        """The session's PulseAudio: its socket, state and runtime files in the session's
        directory (0700, the session's account), so only the session's own processes reach it;
        the host's sound server is never used. Selkies makes its own null sinks on it and
        streams their monitor; the session's applications play into it."""
        assert self.tools.pulseaudio is not None
        directory = desktop.directory / "pulse"
        directory.mkdir(mode=0o700, exist_ok=True)
        if desktop.sandbox is not None:
            await asyncio.to_thread(give, directory, desktop.sandbox.uid)
        inside = desktop.inside(directory)
        listening = directory / "native"
        command, own = sound_server(self.tools.pulseaudio, inside)
        env = {**base, **own}
        process = self._spawn(desktop, "pulseaudio", command, env, **quiet)
        deadline = time.monotonic() + SOUND_TIMEOUT_S
        while not listening.exists():
            if process.poll() is not None:
                raise RuntimeError(f"PulseAudio exited ({process.returncode}) before its socket")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PulseAudio made no socket within {SOUND_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)
        return f"unix:{inside}/native"

    # --- crashes ------------------------------------------------------------------------------

    async def _monitor(self, pod: dict[str, Any], desktop: Desktop) -> None:
        """Xvfb or the agent exiting is the container exiting (Selkies is the agent's)."""
        watched = {
            asyncio.create_task(_exited(desktop.processes[what])): what
            for what in ("Xvfb", "vdi-agent")
        }
        done, pending = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if desktop.stopping:
            return
        finished = next(iter(done))
        what, code = watched[finished], finished.result()
        if desktop.sandbox is not None and code > 128:
            code = -(code - 128)  # bubblewrap exits 128+N for a program killed by signal N
        message = f"{what} exited ({_describe_exit(code)})"
        if what == "Xvfb":
            message = (
                f"Xvfb, the session's display {desktop.display}, exited ({_describe_exit(code)})"
            )
        else:
            tail = self._agent_log_tail(desktop)
            if tail:
                message += f"; last output: {tail}"
        log.warning("local desktop crashed", session_id=desktop.session_id, detail=message)
        await self._kill(desktop)
        await self._container_exited(pod, code, message)

    def _agent_log_tail(self, desktop: Desktop) -> str:
        path = desktop.directory / "agent.log"
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").strip().splitlines()
            return " | ".join(line[:300] for line in lines[-AGENT_LOG_TAIL:])
        return ""

    async def _container_exited(self, pod: dict[str, Any], code: int | None, why: str) -> None:
        if self.fake is not None:
            metadata = pod["metadata"]
            await self.fake.container_exited(metadata["namespace"], metadata["name"], code, why)

    # --- stop ---------------------------------------------------------------------------------

    async def _kill(self, desktop: Desktop) -> None:
        """SIGTERM to the session's group (the agent stops Selkies' own group), SIGKILL after the
        grace, then whatever still carries the session's marker."""
        desktop.stopping = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if desktop.pgid:
                os.killpg(desktop.pgid, signal.SIGTERM)
        agent = desktop.processes.get("vdi-agent")
        if agent is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(agent), STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if desktop.pgid:
                os.killpg(desktop.pgid, signal.SIGKILL)
        for process in desktop.processes.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(process), STOP_GRACE_S)
        left = await asyncio.to_thread(self._marked, {desktop.session_id})
        await _terminate(left)
        if desktop.monitor is not None and desktop.monitor is not asyncio.current_task():
            desktop.monitor.cancel()
        log.info("local desktop stopped", session_id=desktop.session_id, stragglers=len(left))

    def _forget(self, desktop: Desktop) -> None:
        """The pod is gone: so are its logs and an emptyDir home (the user's stays)."""
        shutil.rmtree(desktop.directory, ignore_errors=True)

    # --- the sweep ----------------------------------------------------------------------------

    def _marked(self, sessions: set[str] | None) -> list[psutil.Process]:
        """Processes carrying this runtime's marker: of `sessions`, or (None) of any session
        this runtime does not run now."""
        running = {d.session_id for d in self._desktops.values()}
        found = []
        for process in _processes_with_env():
            environ = process.info["environ"]
            if environ.get(RUNTIME_MARKER) != str(self.root):
                continue
            session = environ.get(SESSION_MARKER, "")
            if sessions is not None and session in sessions:
                found.append(process)
            elif sessions is None and session not in running:
                found.append(process)
        return found

    async def sweep(self) -> int:
        """Stop the processes of sessions this runtime does not run (a previous run's, or a
        pod's whose stop failed) and the desktops whose pod is gone. How many it stopped."""
        assert self.fake is not None
        live_uids = {p["metadata"]["uid"] for p in self.fake.live("pods")}
        stopped = 0
        for uid, desktop in list(self._desktops.items()):
            if uid not in live_uids and uid not in self._starts:
                self._desktops.pop(uid, None)
                await self._kill(desktop)
                self._forget(desktop)
                stopped += 1
        for uid in [u for u in self._ports if u not in live_uids and u not in self._starts]:
            del self._ports[uid]  # reserved for a create the API refused (an idempotent retry)
        orphans = await asyncio.to_thread(self._marked, None)
        await _terminate(orphans)
        for process in orphans:
            log.warning("orphan local desktop process stopped", pid=process.pid)
        return stopped + len(orphans)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.orphan_sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("local desktop sweep failed")

    async def start(self) -> None:
        """Before the first session: stop what a previous run left (it should have died with
        that run's server), then sweep every orphan sweep interval."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.settings.local_isolation
        why = (
            "VDI_LOCAL_ISOLATION=none"
            if mode == "none"
            else await asyncio.to_thread(why_not_isolated, self.settings.local_uid_base)
        )
        self.isolated, self.single_user_reason = not why, why
        if why and mode == "sandbox":
            raise RuntimeError(f"VDI_LOCAL_ISOLATION=sandbox, but {why}")
        if why:
            log.warning(
                "LOCAL DESKTOPS ARE SINGLE-USER: every desktop runs as this server's account "
                "and can read its data dir, its keys and the other desktops. Run `vdi-control "
                "serve` as root with bubblewrap installed (apt-get install bubblewrap) for an "
                "account and a sandbox per user",
                why=why,
            )
        else:
            log.info("local desktops isolated: an account and a sandbox per user")
        no_images = await asyncio.to_thread(homes.why_no_images) if self.isolated else ""
        self.home_images = self.isolated and not no_images
        if no_images:
            log.warning(
                "local homes are plain directories: home_size is not enforced and one full "
                "home fills the data dir's disk",
                why=no_images,
            )
        leftovers = await asyncio.to_thread(self._marked, None)
        await _terminate(leftovers)
        if leftovers:
            log.warning("stopped processes a previous run left", processes=len(leftovers))
        # a killed run's mounted homes: unmounted before anything under them is removed
        if await asyncio.to_thread(homes.detach_all_under, self.root):
            log.warning("unmounted homes a previous run left mounted")
        shutil.rmtree(self.root / "sessions", ignore_errors=True)  # the previous run's pods
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._starts.values()):
            task.cancel()
        desktops, self._desktops = list(self._desktops.values()), {}
        await asyncio.gather(*(self._kill(d) for d in desktops))
        for desktop in desktops:
            await self._release_home(desktop)
            self._forget(desktop)


def _processes_with_env() -> Iterator[psutil.Process]:
    for process in psutil.process_iter(["environ"]):
        if process.info.get("environ"):
            yield process


async def _terminate(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    if processes:
        _gone, alive = await asyncio.to_thread(psutil.wait_procs, processes, STOP_GRACE_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"
