"""Instants in order, over the real reconciler: many sessions at once, cold and from a warm pool,
on the simulated cluster (its stand-in agents report as a pod's agent does, racing the
reconciler), each taken through Running to Terminated or deleted on the way. Before the fix, a
report that waited for the row lock the reconciler held stamped `running_at` with the clock it
read before waiting: earlier than `provisioned_at`. (The local desktops' end-to-end tests check
the same on real desktops: tests/e2e/test_local_desktops.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from harness.servers import collect_closed_sockets, free_port, serve
from tests.conftest import ADMIN, _truncate, simulated_app
from tests.instants import disorder

FLEETS = st.fixed_dictionaries(
    {
        "cold": st.integers(1, 8),
        "warm": st.integers(0, 5),
        "pool": st.integers(1, 3),
        # sessions deleted before they are Running (by position)
        "early": st.sets(st.integers(0, 12), max_size=4),
    }
)


async def _until(check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def _fleet(base: Settings, database_url: str, fleet: dict[str, Any]) -> list[str]:
    port = free_port()
    app = simulated_app(base, database_url, port, pool_interval_s=0.2, simulated_gpus=64)
    problems: list[str] = []
    async with serve(app, port) as url, httpx.AsyncClient(base_url=url, headers=ADMIN) as api:
        cold = {"image": "registry.test/vdi:1", "gpu": 1}
        warm = {**cold, "persistent_home": False, "warm_pool": fleet["pool"]}
        assert (await api.put("/v1/templates/cold", json=cold)).status_code in (200, 201)
        assert (await api.put("/v1/templates/warm", json=warm)).status_code in (200, 201)

        async def pool_ready() -> bool:
            template = (await api.get("/v1/templates/warm")).json()
            return bool(template["warm_available"] >= fleet["pool"])

        await _until(pool_ready, 60)
        templates = ["cold"] * fleet["cold"] + ["warm"] * fleet["warm"]
        created = await asyncio.gather(
            *(
                api.post("/v1/sessions", json={"user": f"user-{n}", "template": template})
                for n, template in enumerate(templates)
            )
        )
        ids = [response.json()["id"] for response in created]
        early = [ids[n] for n in sorted(fleet["early"]) if n < len(ids)]
        await asyncio.gather(*(api.delete(f"/v1/sessions/{i}") for i in early))

        async def all_running() -> bool:
            phases = [(await api.get(f"/v1/sessions/{i}")).json()["phase"] for i in ids]
            return all(
                phase in ("Terminating", "Terminated") if i in early else phase == "Running"
                for i, phase in zip(ids, phases, strict=True)
            )

        await _until(all_running, 60)
        await asyncio.gather(*(api.delete(f"/v1/sessions/{i}") for i in ids if i not in early))

        async def all_ended() -> bool:
            phases = [(await api.get(f"/v1/sessions/{i}")).json()["phase"] for i in ids]
            return all(phase == "Terminated" for phase in phases)

        await _until(all_ended, 60)
        for session_id in ids:
            session = (await api.get(f"/v1/sessions/{session_id}")).json()
            events = (await api.get(f"/v1/sessions/{session_id}/events")).json()["items"]
            problems += disorder(session, events)
    return problems


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(fleet=FLEETS)
async def test_instants_and_events_stay_in_order_whatever_races_the_reconciler(
    settings: Settings, database_url: str, tmp_path: Path, fleet: dict[str, Any]
) -> None:
    try:
        problems = await _fleet(settings, database_url, fleet)
    finally:
        collect_closed_sockets()
        await _truncate(database_url)
    assert problems == [], "\n".join(problems)
