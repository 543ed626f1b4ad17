"""Template rules: create-or-replace, and no deletion while live sessions use one."""

from __future__ import annotations

import base64
import binascii
import re

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import DNS_LABEL_PATTERN
from app.errors import Conflict, NotFound, ValidationFailed
from app.models import Template
from app.templates import repository
from app.templates.schemas import TemplateOut, TemplateSpec


class TemplateNotFound(NotFound):
    """No template has this name: `PUT /v1/templates/{name}` makes one."""

    slug, title = "template-not-found", "Template not found"


class TemplateInUse(Conflict):
    """Live sessions use the template: end them before deleting it."""

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


TEMPLATE_PAGE_MAX = 500


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, binascii.Error):
        name = ""
    if not re.fullmatch(DNS_LABEL_PATTERN, name) or len(name) > 63:
        raise ValidationFailed(
            "Not a cursor this API issued; pass `next_cursor` from the previous page as it is",
            field="cursor",
            location="query",
        )
    return name


async def list_templates(
    db: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[Template], str | None]:
    """One page of templates by name, and the cursor of the next (None at the end)."""
    after = decode_cursor(cursor) if cursor else None
    page = await repository.list_page(db, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return page, encode_cursor(page[-1].name) if more else None


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
