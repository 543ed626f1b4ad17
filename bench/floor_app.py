"""The floor of bench/api.py: a bare FastAPI endpoint doing one Postgres round trip through the
same engine settings the service uses, and nothing else (no auth, no middleware, no ORM)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text

from app.db import create_engine

engine = create_engine(os.environ["VDI_DATABASE_URL"])


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/floor")
async def floor() -> dict[str, int]:
    async with engine.connect() as connection:
        value = (await connection.execute(text("SELECT 1"))).scalar_one()
    return {"value": int(value)}
