"""Listings and heartbeats write sessions without building the pydantic model
(`schemas.session_document`): their JSON must be byte for byte what the model writes, or a
client sees one session two ways depending on the route that answered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from asyncpg.pgproto.pgproto import UUID as PgUUID
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sessions.lifecycle import initial_conditions
from app.sessions.schemas import (
    ConditionReason,
    ConditionStatus,
    ConditionType,
    Phase,
    Session,
    SessionPage,
    SessionReason,
    dump_json,
    session_document,
)

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
) | st.datetimes(  # whole seconds, which ISO text writes without a fraction
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))
offsets = st.just(UTC) | st.builds(
    timezone, st.integers(-14 * 60, 14 * 60).map(lambda minutes: timedelta(minutes=minutes))
)
texts = st.text(max_size=40)


@st.composite
def stored_conditions(draw: st.DrawFn) -> list[dict[str, Any]]:
    conditions = []
    for condition_type in draw(st.lists(st.sampled_from(ConditionType), max_size=5)):
        moment = draw(instants).astimezone(draw(offsets))
        condition = {
            "type": condition_type.value,
            "status": draw(st.sampled_from(ConditionStatus)).value,
            "reason": draw(st.sampled_from(ConditionReason)).value,
            "message": draw(texts),
            "last_transition_time": moment.isoformat(),
        }
        if draw(st.booleans()):  # keys the model ignores, in another order
            condition = {"observed": draw(texts), **dict(reversed(list(condition.items())))}
        conditions.append(condition)
    return conditions


# as jsonb_build_object gives it from the stored spec: a member the spec lacks is null
policies = st.fixed_dictionaries(
    {
        "clipboard": st.none() | st.sampled_from(["both", "in", "out", "off"]),
        "file_transfer": st.none() | st.sampled_from(["both", "upload", "download", "off"]),
        "file_transfer_limit_mbps": st.none() | st.sampled_from([0, 0.5, 20]),
        "audio": st.none() | st.booleans(),
        "microphone": st.none() | st.booleans(),
        "printing": st.none() | st.booleans(),
        "gamepads": st.none() | st.booleans(),
        "sharing": st.none() | st.sampled_from(["off", "view", "collab"]),
    }
)
# as app.sessions.capacity stores it: its instant as ISO text
capacity_waits = st.none() | st.fixed_dictionaries(
    {
        "resources": st.lists(st.sampled_from(["nvidia.com/gpu", "cpu", "memory"]), max_size=3),
        "since": instants.map(lambda instant: instant.isoformat()),
        "scheduler_message": texts,
        "autoscaler": st.none() | st.sampled_from(["TriggeredScaleUp", "NotTriggerScaleUp"]),
        "autoscaler_message": st.none() | texts,
        "position": st.none() | st.integers(1, 500),
        "waiting": st.none() | st.integers(1, 500),
    }
)
# as app.sessions.lifecycle.apply_viewers stores them: instants as ISO text
viewers = st.none() | st.lists(
    st.fixed_dictionaries(
        {
            "id": st.from_regex(r"client-[0-9a-f]{8}", fullmatch=True),
            "role": st.sampled_from(["owner", "viewer", "collaborator", "controller"]),
            "share": st.none() | st.uuids().map(str),
            "since": st.none() | instants.map(lambda instant: instant.isoformat()),
            "address": st.none() | st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
        }
    ),
    max_size=4,
)
# as app.shares.service stores it, with what app.sessions.lifecycle took from the agent
recordings = st.none() | st.fixed_dictionaries(
    {
        "wanted": st.booleans(),
        "request": st.uuids().map(str),
        "name": st.none() | st.just("talk.mp4"),
        "requested_by": st.none() | texts,
        "requested_at": instants.map(lambda instant: instant.isoformat()),
    },
    optional={
        "active": st.none() | st.booleans(),
        "path": st.none() | texts,
        "size_bytes": st.none() | st.integers(0, 10**9),
        "duration_s": st.none() | st.floats(0, 10**5),
        "error": st.none() | texts,
    },
)
rows = st.fixed_dictionaries(
    {
        # what asyncpg hands back (a subclass of uuid.UUID) and what the ORM does
        "id": st.uuids().flatmap(lambda value: st.sampled_from([value, PgUUID(str(value))])),
        "user": texts,
        "template": texts,
        "phase": st.sampled_from(Phase).map(lambda phase: phase.value),
        "reason": st.none() | st.sampled_from(SessionReason).map(lambda reason: reason.value),
        "message": st.none() | texts,
        "conditions": stored_conditions(),
        "url": texts,
        "encoder": st.none() | texts,
        "streamer": st.none() | texts,
        "gpu": st.integers(0, 8),
        "policy": policies,
        "warm": st.booleans(),
        "created_at": instants,
        "updated_at": instants,
        "provisioned_at": st.none() | instants,
        "scheduled_at": st.none() | instants,
        "running_at": st.none() | instants,
        "ended_at": st.none() | instants,
        "idle_deadline": instants,
        "expires_at": instants,
        "capacity_wait": capacity_waits,
        "viewers": viewers,
        "recording": recordings,
    }
)


@settings(max_examples=300)
@given(rows)
def test_a_session_document_is_the_models_json(row: dict[str, Any]) -> None:
    assert (
        dump_json(session_document(row)) == Session.model_validate(row).model_dump_json().encode()
    )


def test_a_page_of_documents_is_the_models_json() -> None:
    now = datetime.now(UTC)
    row = {
        "id": uuid.uuid4(),
        "user": "alice",
        "template": "gpu-desktop",
        "phase": "Pending",
        "reason": "Created",
        "message": "Accepted; waiting for the reconciler",
        "conditions": initial_conditions(1, now),
        "url": "https://alice.vdi.example.com/",
        "encoder": None,
        "streamer": None,
        "gpu": 1,
        "policy": {"clipboard": "off", "audio": None},
        "warm": False,
        "created_at": now,
        "updated_at": now,
        "provisioned_at": None,
        "scheduled_at": None,
        "running_at": None,
        "ended_at": None,
        "idle_deadline": now + timedelta(hours=1),
        "expires_at": now + timedelta(days=1),
        "capacity_wait": None,
        "viewers": None,
        "recording": None,
    }
    page = SessionPage.model_validate({"items": [row, row], "next_cursor": "abc"})
    ours = dump_json({"items": [session_document(row)] * 2, "next_cursor": "abc"})
    assert ours == page.model_dump_json().encode()
