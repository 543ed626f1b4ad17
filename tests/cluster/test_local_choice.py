"""Which cluster `serve` runs: `auto` without a cluster picks local desktops where Xvfb and
Selkies are installed, else the simulation, and says what local desktops lack and how to get it;
`local` without them is an error that says the same."""

from __future__ import annotations

import pytest

from app.cluster.kube import ClusterError
from app.config import Settings
from app.runtimes import choose_cluster


@pytest.fixture(autouse=True)
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_auto_runs_local_desktops_where_this_machine_has_xvfb_and_selkies() -> None:
    # CI installs both (apt's xvfb, the [desktop] extra beside this Python)
    assert choose_cluster(Settings(cluster="auto")) == ("local", [])


def test_auto_without_selkies_simulates_and_says_how_to_get_local_desktops() -> None:
    mode, missing = choose_cluster(Settings(cluster="auto", local_selkies="/nonexistent/selkies"))
    assert mode == "simulated"
    assert missing == ["selkies at /nonexistent/selkies (pip install 'vdi-control[desktop]')"]


def test_local_without_selkies_is_an_error_naming_what_is_missing() -> None:
    with pytest.raises(ClusterError, match=r"VDI_CLUSTER=local needs selkies.*\[desktop\]"):
        choose_cluster(Settings(cluster="local", local_selkies="/nonexistent/selkies"))


def test_simulated_and_kubernetes_do_not_look_for_local_desktops() -> None:
    settings = Settings(cluster="simulated", local_selkies="/nonexistent/selkies")
    assert choose_cluster(settings) == ("simulated", [])
    with pytest.raises(ClusterError, match="neither an in-cluster service account"):
        choose_cluster(Settings(cluster="kubernetes"))
