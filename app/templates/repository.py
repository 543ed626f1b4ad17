"""Queries on templates."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Template, VDISession
from app.models._types import utcnow

LIVE_PHASES_EXCLUDED = ("Terminated",)


async def get(db: AsyncSession, name: str, *, lock: str | None = None) -> Template | None:
    query = select(Template).where(Template.name == name)
    if lock == "share":
        query = query.with_for_update(read=True)
    elif lock == "update":
        query = query.with_for_update()
    return (await db.execute(query)).scalar_one_or_none()


async def list_all(db: AsyncSession) -> list[Template]:
    return list((await db.execute(select(Template).order_by(Template.name))).scalars())


async def list_page(db: AsyncSession, *, after: str | None, limit: int) -> list[Template]:
    """Up to `limit` templates by name, after `after` (keyset: an index range read)."""
    query = select(Template).order_by(Template.name).limit(limit)
    if after is not None:
        query = query.where(Template.name > after)
    return list((await db.execute(query)).scalars())


async def list_pooled(db: AsyncSession, also: set[str]) -> list[Template]:
    """The templates the pool keeper looks at: those asking for a warm pool, and those named
    in `also` (that still have members). The others cost nothing at rest."""
    query = select(Template).where(Template.warm_pool > 0)
    if also:
        query = select(Template).where((Template.warm_pool > 0) | Template.name.in_(also))
    return list((await db.execute(query.order_by(Template.name))).scalars())


async def list_prepulled(db: AsyncSession) -> list[Template]:
    """The templates that ask for an image pre-pull."""
    query = select(Template).where(Template.prepull.is_(True)).order_by(Template.name)
    return list((await db.execute(query)).scalars())


async def upsert(db: AsyncSession, name: str, values: dict[str, Any]) -> tuple[Template, bool]:
    now = utcnow()
    statement: Any = (
        insert(Template)
        .values(name=name, created_at=now, updated_at=now, **values)
        .on_conflict_do_update(index_elements=[Template.name], set_={**values, "updated_at": now})
        .returning(Template, literal_column("(xmax = 0)").label("created"))
    )
    row = (await db.execute(statement, execution_options={"populate_existing": True})).one()
    return row[0], bool(row[1])


async def count_live_sessions(db: AsyncSession, name: str) -> int:
    query = select(func.count()).where(
        VDISession.template_name == name,
        VDISession.phase.not_in(LIVE_PHASES_EXCLUDED),
        VDISession.pool_member.is_(False),  # its warm pool's members end with it
    )
    return int((await db.execute(query)).scalar_one())


async def delete(db: AsyncSession, template: Template) -> None:
    await db.delete(template)
    await db.flush()


async def warm_available(db: AsyncSession, names: list[str]) -> dict[str, int]:
    """Per template: its warm pool members ready to be claimed (Running, no user)."""
    rows = await db.execute(
        select(VDISession.template_name, func.count())
        .where(
            VDISession.template_name.in_(names),
            VDISession.pool_member.is_(True),
            VDISession.phase == "Running",
        )
        .group_by(VDISession.template_name)
    )
    return {name: int(count) for name, count in rows.all()}
