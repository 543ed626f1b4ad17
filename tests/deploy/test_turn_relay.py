"""The TURN relay as the chart runs it (bench/turn_peers.py): real coturn started with the
arguments the chart renders, in a private network namespace, and a TURN client holding a
session's credential. Needs root, coturn, iproute2 and util-linux (.ci/run installs them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.test_chart import coturn_args, coturn_secret_command
from tests.tools import bench_report, tool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def relay() -> dict[str, Any]:
    for name in ("turnserver", "unshare", "ip"):
        tool(name)
    return bench_report(
        "bench.turn_peers",
        "--args-json",
        json.dumps(coturn_args({})),
        "--secret-command-json",
        json.dumps(coturn_secret_command({})),
        timeout_s=120,
    )


def test_a_public_peer_is_relayed(relay: dict[str, Any]) -> None:
    assert relay["peers"]["public"] == {
        "ip": "11.22.33.44",
        "permission": "granted",
        "received": True,
    }


@pytest.mark.parametrize(
    "peer",
    [
        "private-192.168",
        "cluster-service",
        "private-172.16",
        "cgnat",
        "link-local-metadata",
        "loopback",
    ],
)
def test_private_cluster_and_local_peers_are_refused(relay: dict[str, Any], peer: str) -> None:
    outcome = relay["peers"][peer]
    assert (outcome["permission"], outcome["error_code"], outcome["received"]) == (
        "refused",
        403,
        False,
    )


def test_relay_to_relay_still_works(relay: dict[str, Any]) -> None:
    """The browser and Selkies meet relay to relay: coturn's own address stays allowed."""
    assert relay["relay_to_relay"]["a_received"] is True
    assert relay["relay_to_relay"]["b_received"] is True


def test_no_tcp_relay_and_no_expired_credential(relay: dict[str, Any]) -> None:
    assert relay["tcp_allocation"] == "refused 442"  # Unsupported Transport Protocol
    assert relay["expired_credential"] == "refused 401"


def test_the_shared_secret_reaches_coturn_by_a_file_not_its_arguments(
    relay: dict[str, Any],
) -> None:
    # the relay works (above) with the secret only in the file the init container wrote
    assert relay["secret_in_arguments"] is False
    assert relay["peers"]["public"]["permission"] == "granted"


def test_coturn_listens_on_tcp_where_the_charts_probes_connect(relay: dict[str, Any]) -> None:
    assert relay["tcp_listening"] is True


def test_one_credential_holds_at_most_its_quota_of_relays(relay: dict[str, Any]) -> None:
    """Finding 27.12: one credential took all 41 relay ports and the next session got 508."""
    quota = relay["user_quota"]
    assert quota["granted"] == quota["quota"]
    assert quota["refused"] == 486  # Allocation Quota Reached
    assert quota["other_credential"] == "allocated"
