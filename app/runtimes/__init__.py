"""Where sessions run, chosen in one place. Every runtime is behind the Kubernetes API, so the
reconciler cannot tell them apart:

- `kubernetes`: a real cluster, through the adapter (app.cluster.kube) and the pure manifests;
- `simulated` (simulated.py): the fake Kubernetes API (the `kubefake` package) in process, with
  a stand-in agent that reports every pod healthy; nothing real runs;
- `local` (local.py, with sandbox.py and homes.py): the fake API whose kubelet runs each session
  pod as real, sandboxed processes on this machine.

The two in-process runtimes need the `fake` extra (`pip install 'vdi-control[fake]'`, which
`[desktop]` and `[dev]` include); the control-plane image, made for a real cluster, has not."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog

from app.cluster.kube import ClusterError, KubeCluster, detect_cluster, real_cluster
from app.config import Settings
from app.runtimes.local import missing_tools

log = structlog.get_logger("vdi.runtimes")

NO_FAKE = (
    "VDI_CLUSTER={mode} runs the fake Kubernetes API in process, and its packages are not "
    "installed: pip install 'vdi-control[fake]' (or [desktop] for local desktops), or give the "
    "server a cluster (KUBECONFIG, or its in-cluster service account)"
)


@dataclass(frozen=True)
class Runtime:
    cluster: KubeCluster
    mode: str  # kubernetes, local or simulated
    single_user: str = ""  # local desktops not isolated: why (empty otherwise)


def choose_cluster(settings: Settings) -> tuple[str, list[str]]:
    """The cluster VDI_CLUSTER means on this machine, and what local desktops lack here (said
    when the simulation runs instead). VDI_CLUSTER=local without them is an error."""
    missing = missing_tools(settings) if settings.cluster in ("auto", "local") else []
    if settings.cluster == "local" and missing:
        raise ClusterError("VDI_CLUSTER=local needs " + "; ".join(missing), temporary=False)
    return detect_cluster(settings.cluster, local_ready=not missing), missing


async def start_runtime(settings: Settings, stack: contextlib.AsyncExitStack) -> Runtime:
    """The runtime VDI_CLUSTER means here, started on `stack` (stopped when it closes)."""
    mode, missing = choose_cluster(settings)
    if mode == "kubernetes":
        cluster = real_cluster(settings.namespace, settings.ingress_api_version)
        stack.callback(cluster.close)
        return Runtime(cluster, mode)
    try:
        from app.runtimes import simulated
    except ModuleNotFoundError as error:
        raise ClusterError(NO_FAKE.format(mode=mode), temporary=False) from error
    if mode == "local":
        log.warning(
            "LOCAL DESKTOPS: no kubeconfig or in-cluster config (or VDI_CLUSTER=local); each "
            "session runs as processes on this machine (Xvfb, vdi-agent, Selkies 2.x) and its "
            "url is this machine's address. A cluster: KUBECONFIG or VDI_CLUSTER=kubernetes; "
            "the stand-in agent instead: VDI_CLUSTER=simulated.",
            address=settings.local_address,
            turn="on" if settings.turn_enabled else "off (VDI_TURN_HOST unset)",
        )
        cluster, _fake, desktops = await stack.enter_async_context(
            simulated.local_cluster(settings)
        )
        return Runtime(cluster, mode, desktops.single_user_reason)
    log.warning(
        "SIMULATED CLUSTER: no kubeconfig or in-cluster config (or VDI_CLUSTER=simulated); "
        "sessions run on an in-process fake Kubernetes API with a stand-in agent. "
        "Nothing real is started."
        + (" For real desktops on this machine install " + " and ".join(missing) if missing else "")
    )
    cluster, _fake = await stack.enter_async_context(simulated.simulated_cluster(settings))
    return Runtime(cluster, mode)
