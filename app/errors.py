"""Errors: the AppError hierarchy and its one rendering, application/problem+json (RFC 9457)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import asyncpg
import structlog
from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:vdi-control:problem:"

log = structlog.get_logger("vdi.errors")


class FieldError(BaseModel):
    field: str = Field(
        description="Dotted path of the bad field, e.g. `user` or `tolerations.0.effect`"
    )
    location: str = Field(description="Where the field was: body, query, path or header")
    message: str
    type: str = Field(description="Machine-readable error kind")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(examples=[PROBLEM_TYPE_BASE + "session-not-found"])
    title: str = Field(examples=["Session not found"])
    status: int = Field(examples=[404])
    detail: str = Field(
        examples=["No session with id 6f1c...; list sessions with GET /v1/sessions"]
    )
    instance: str | None = Field(default=None, description="The request path")
    request_id: str | None = Field(default=None, description="Quote it when reporting a problem")
    errors: list[FieldError] | None = Field(default=None, description="For 422: each bad field")


class AppError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(AppError):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="vdi-control"'})


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class ValidationFailed(AppError):
    status, slug, title = 422, "validation-failed", "Invalid request"

    def __init__(self, detail: str, *, field: str, location: str = "body") -> None:
        super().__init__(
            detail,
            errors=[FieldError(field=field, location=location, message=detail, type="value_error")],
        )


class TooManyRequests(AppError):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class ServiceUnavailable(AppError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class DatabaseAway(Exception):
    """A database connection lost again on a fresh connection, outside SQLAlchemy (the direct
    asyncpg pool of app.sessions.service): answered as the database being away, 503."""


def problem_response(
    request: Request | None,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = Problem(
        type=PROBLEM_TYPE_BASE + slug,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        request_id=correlation_id.get(),
        errors=errors,
    ).model_dump(exclude_none=True)
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each error it can raise, documented as problem+json."""
    documented: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        documented[error.status] = {
            "model": Problem,
            "description": error.title,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return documented


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    result = []
    for item in exc.errors():
        loc = [str(part) for part in item.get("loc", ())]
        location = loc[0] if loc else "body"
        field = ".".join(loc[1:]) or location
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "string_pattern_mismatch" and field in ("user", "name"):
            message = (
                "must be a DNS label: lowercase letters, digits and '-', starting and ending "
                "with a letter or digit, at most 63 characters"
            )
        result.append(
            FieldError(field=field, location=location, message=message, type=item["type"])
        )
    return result


def _database_unavailable(request: Request) -> JSONResponse:
    return problem_response(
        request,
        status=503,
        slug="database-unavailable",
        title="Service unavailable",
        detail="The database is not reachable right now; retry after the Retry-After delay",
        headers={"Retry-After": "2"},
    )


# SQLSTATEs that mean "the server is not there right now": connection exceptions (class 08),
# admin/crash shutdown and "the database system is starting up" (57P01-57P03), too many
# connections (53300). asyncpg raises the last ones as plain errors, not OperationalError.
AWAY_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
# The database is there but cannot take writes: disk full (53100), out of memory (53200). Also
# a 503: retry later; /readyz says not ready for a while after one (app/ops/router.py).
FULL_SQLSTATES = {"53100", "53200"}
DATABASE_FULL_READY_S = 30.0  # how long /readyz says not ready after the database said full


def database_away(exc: DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(
        getattr(exc.orig, "__cause__", None), "sqlstate", None
    )
    return _away_sqlstate(sqlstate)


def _away_sqlstate(sqlstate: object) -> bool:
    """Shutting down, starting up, out of connections, out of disk or memory, or a connection
    exception (08xxx)."""
    return isinstance(sqlstate, str) and (
        sqlstate in AWAY_SQLSTATES or sqlstate in FULL_SQLSTATES or sqlstate.startswith("08")
    )


def _sqlstate(exc: BaseException) -> object:
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) or getattr(
        getattr(orig, "__cause__", None), "sqlstate", None
    )


def _note_full(request: Request, exc: BaseException) -> None:
    """A database out of disk (or memory): remembered, so that /readyz says not ready."""
    if _sqlstate(exc) in FULL_SQLSTATES:
        request.app.state.database_full_at = time.monotonic()
        log.error(
            "the database is out of space (or memory): writes refused", sqlstate=_sqlstate(exc)
        )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem_response(
            request,
            status=exc.status,
            slug=exc.slug,
            title=exc.title,
            detail=exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        fields = ", ".join(sorted({f"{e.location}.{e.field}" for e in errors}))
        return problem_response(
            request,
            status=422,
            slug="validation-failed",
            title="Invalid request",
            detail=f"Invalid fields: {fields}. See `errors` for what each must be.",
            errors=errors,
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # A lost or refused connection is the database being away, not a bug: say when to retry.
        # Anything else (a constraint we did not expect, bad SQL) stays a 500.
        if not database_away(exc):
            raise exc
        _note_full(request, exc)
        log.warning("database unavailable", error=type(exc.orig).__name__ if exc.orig else None)
        return _database_unavailable(request)

    # The heartbeat's own asyncpg pool (app.db.on_direct_pool) raises asyncpg's errors
    # unwrapped: the same rule as for DBAPIError above.
    @app.exception_handler(asyncpg.PostgresError)
    async def _postgres_error(request: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        if not _away_sqlstate(getattr(exc, "sqlstate", None)):
            raise exc
        _note_full(request, exc)
        log.warning("database unavailable", error=type(exc).__name__)
        return _database_unavailable(request)

    @app.exception_handler(DatabaseAway)
    async def _database_away(request: Request, exc: DatabaseAway) -> JSONResponse:
        log.warning("database unavailable", error=str(exc))
        return _database_unavailable(request)

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(request: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection is busy past the pool's timeout: overload, not a bug.
        log.warning("database pool exhausted")
        return problem_response(
            request,
            status=503,
            slug="database-busy",
            title="Service unavailable",
            detail="Every database connection is busy; retry after the Retry-After delay",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(OSError)
    async def _connect_error(request: Request, exc: OSError) -> JSONResponse:
        # asyncpg raises OSError (ConnectionRefusedError, FileNotFoundError for a unix socket)
        # when a new pool connection cannot be opened. Other OS errors are bugs: a 500.
        if not isinstance(exc, ConnectionError | FileNotFoundError | TimeoutError):
            raise exc
        log.warning("database unreachable", error=type(exc).__name__)
        return _database_unavailable(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 406: "Not acceptable"}
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.url.path}; the API is under /v1 (see /openapi.json)"
        return problem_response(
            request,
            status=exc.status_code,
            slug="http-" + str(exc.status_code),
            title=titles.get(exc.status_code, "HTTP error"),
            detail=detail,
            headers=dict(exc.headers or {}),
        )
