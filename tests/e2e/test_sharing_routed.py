"""Sharing on the Kubernetes path (bench/selkies_session.py --sharing): a session of a template
that shares, its pod's agent supervising the real Selkies 2.x in secure mode, a real Traefik v3
routing `https://alice.vdi.test:<port>/` to it, a real coturn relaying, and three headless
Chromiums: the user's page (the connection's launch_url) and a viewer's and a collaborator's
(their shares' links) all decode; the viewer's typing does not reach the desktop and the
collaborator's does; the viewer's share revoked, its video stops within a second and its link
opens nothing more. (The same on local desktops: tests/e2e/test_sharing.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.tools import bench_report

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return bench_report("bench.selkies_session", "--sharing", timeout_s=300)


def test_the_user_a_viewer_and_a_collaborator_all_decode_through_traefik(
    report: dict[str, Any],
) -> None:
    assert report["session_running"]["phase"] == "Running"
    assert all(page["frames_decoded"] > 30 for page in report["pages"].values())
    # who is watching: each page by its role, the shares' with their share, all with addresses
    assert report["viewers"] == [
        ["collaborator", True, True],
        ["owner", False, True],
        ["viewer", True, True],
    ]


def test_a_token_opens_selkies_api_and_nothing_else_does(report: dict[str, Any]) -> None:
    assert report["api_status"] == {
        "user_token": 200,
        "viewer_token": 200,
        "no_token": 401,
        "made_up_token": 401,
    }


def test_the_viewers_typing_is_dropped_and_the_collaborators_lands(report: dict[str, Any]) -> None:
    assert report["viewer_typed"] is False
    assert report["collaborator_typed"] is True


def test_a_revoked_share_loses_its_video_at_once_and_its_link(report: dict[str, Any]) -> None:
    assert report["revoked_video_stopped_s"] is not None
    assert report["revoked_video_stopped_s"] < 5
    assert report["revoked_gone_from_viewers_s"] < 10
    assert report["owner_still_decoding"] is True
    assert report["revoked_link_frames"] == 0
    assert any("Invalid authentication token" in said for said in report["revoked_link_alerts"])
