"""Template rules: create-or-replace, and no deletion while live sessions use one."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, NotFound
from app.models import Template
from app.templates import repository
from app.templates.schemas import TemplateOut, TemplateSpec


class TemplateNotFound(NotFound):
    slug, title = "template-not-found", "Template not found"


class TemplateInUse(Conflict):
    slug, title = "template-in-use", "Template in use"


def spec_values(spec: TemplateSpec) -> dict[str, object]:
    return spec.model_dump(mode="json")


async def put_template(db: AsyncSession, name: str, spec: TemplateSpec) -> tuple[Template, bool]:
    return await repository.upsert(db, name, spec_values(spec))


async def get_template(db: AsyncSession, name: str, *, lock: str | None = None) -> Template:
    template = await repository.get(db, name, lock=lock)
    if template is None:
        raise TemplateNotFound(
            f"No template named '{name}'; create it with PUT /v1/templates/{name}"
        )
    return template


async def find_template(db: AsyncSession, name: str, *, lock: str | None = None) -> Template | None:
    return await repository.get(db, name, lock=lock)


async def list_templates(db: AsyncSession) -> list[Template]:
    return await repository.list_all(db)


async def delete_template(db: AsyncSession, name: str) -> None:
    # The row lock orders this against session creation, which takes a share lock on it.
    template = await get_template(db, name, lock="update")
    live = await repository.count_live_sessions(db, name)
    if live:
        raise TemplateInUse(
            f"Template '{name}' is used by {live} live session(s); end them first "
            f"(GET /v1/sessions?template={name})",
            extra={"live_sessions": live},
        )
    await repository.delete(db, template)


def template_spec(template: Template) -> TemplateSpec:
    return TemplateSpec.model_validate(
        {field: getattr(template, field) for field in TemplateSpec.model_fields}
    )


async def shown(db: AsyncSession, templates: list[Template]) -> list[TemplateOut]:
    """Templates as returned: with their warm pools' ready members."""
    available = await repository.warm_available(db, [t.name for t in templates])
    return [
        TemplateOut.model_validate(t).model_copy(
            update={"warm_available": available.get(t.name, 0)}
        )
        for t in templates
    ]
