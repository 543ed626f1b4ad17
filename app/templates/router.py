"""HTTP routes of /v1/templates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.audit import service as audit
from app.auth.deps import AUTH_ERRORS, SessionsRead, TemplatesWrite
from app.config import DNS_LABEL_PATTERN
from app.db import DbSession
from app.errors import problem_responses
from app.templates import service
from app.templates.schemas import TemplateList, TemplateOut, TemplateSpec

router = APIRouter(prefix="/v1/templates", tags=["templates"])

NamePath = Annotated[
    str,
    Path(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="A DNS label",
        examples=["gpu-desktop"],
    ),
]


@router.put(
    "/{name}",
    name="put_template",
    responses={
        201: {"model": TemplateOut, "description": "Created"},
        **problem_responses(*AUTH_ERRORS),
    },
    summary="Create or replace a template (200 replaced, 201 created)",
)
async def put_template(
    name: NamePath, body: TemplateSpec, db: DbSession, principal: TemplatesWrite, response: Response
) -> TemplateOut:
    template, created = await service.put_template(db, name, body)
    audit.record(
        db,
        "template.put",
        actor=principal.name,
        data={"template": name, "created": created, "spec": body.model_dump(mode="json")},
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    [shown] = await service.shown(db, [template])
    return shown


@router.get(
    "",
    name="list_templates",
    responses=problem_responses(*AUTH_ERRORS),
    summary="List templates, by name, a page at a time (`next_cursor`)",
)
async def list_templates(
    db: DbSession,
    _: SessionsRead,
    limit: Annotated[int, Query(ge=1, le=service.TEMPLATE_PAGE_MAX)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> TemplateList:
    page, next_cursor = await service.list_templates(db, limit=limit, cursor=cursor)
    return TemplateList(items=await service.shown(db, page), next_cursor=next_cursor)


@router.get(
    "/{name}",
    name="get_template",
    responses=problem_responses(*AUTH_ERRORS, service.TemplateNotFound),
    summary="Get a template",
)
async def get_template(name: NamePath, db: DbSession, _: SessionsRead) -> TemplateOut:
    [shown] = await service.shown(db, [await service.get_template(db, name)])
    return shown


@router.delete(
    "/{name}",
    name="delete_template",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(*AUTH_ERRORS, service.TemplateNotFound, service.TemplateInUse),
    summary="Delete a template (409 while live sessions use it)",
)
async def delete_template(name: NamePath, db: DbSession, principal: TemplatesWrite) -> Response:
    await service.delete_template(db, name)
    audit.record(db, "template.delete", actor=principal.name, data={"template": name})
    return Response(status_code=status.HTTP_204_NO_CONTENT)
