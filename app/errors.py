"""Errors: the AppError hierarchy and its one rendering, application/problem+json (RFC 9457)."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, ClassVar

import asyncpg
import structlog
from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:vdi-control:problem:"

log = structlog.get_logger("vdi.errors")


class FieldLocation(StrEnum):
    body = "body"
    query = "query"
    path = "path"
    header = "header"
    cookie = "cookie"


class FieldError(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    field: str = Field(
        description="Dotted path of the bad field, e.g. `user` or `tolerations.0.effect`"
    )
    location: FieldLocation = Field(description="Where the field was")
    message: str
    type: str = Field(description="Machine-readable error kind, e.g. `string_pattern_mismatch`")


# Every problem type the API sends, by slug (`type` is PROBLEM_TYPE_BASE + slug): filled by the
# AppError classes as they are defined (app.openapi documents each, and the ProblemType enum).
PROBLEMS: dict[str, type[AppError]] = {}


class AppError(Exception):
    """An error answered as a problem of its class's type. A concrete class registers its type
    (`abstract=True` for the bases that are never raised themselves)."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"
    # Response headers a problem of this type carries (documented on each operation)
    sends_headers: ClassVar[tuple[str, ...]] = ()
    # Members beyond RFC 9457's that a problem of this type always carries: name -> (type, Field)
    extensions: ClassVar[dict[str, tuple[Any, Any]]] = {}
    # Whether `status` is this type's one status (False: the HTTP status it was raised with)
    fixed_status: ClassVar[bool] = True

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abstract:
            PROBLEMS[cls.slug] = cls

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
    """No token, or one that is unknown, revoked or expired: send `Authorization: Bearer
    <token>`."""

    status, slug, title = 401, "unauthorized", "Authentication required"
    sends_headers = ("WWW-Authenticate",)

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="vdi-control"'})


class Forbidden(AppError):
    """The token lacks the scope this operation needs (`detail` names it), or an agent token
    used for another session."""

    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(AppError, abstract=True):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError, abstract=True):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    """The request body is over `VDI_MAX_BODY_BYTES` (64 KiB by default): send less."""

    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedEncoding(AppError):
    """A JSON body that is not UTF-8 (NUL bytes, a UTF-16 or UTF-32 byte order mark): send
    UTF-8."""

    status, slug, title = 415, "unsupported-encoding", "Unsupported media type"


class ValidationFailed(AppError):
    """A field is missing or wrong: `errors` lists each one, where it is and what it must be."""

    status, slug, title = 422, "validation-failed", "Invalid request"
    extensions = {
        "errors": (
            list[FieldError],
            Field(description="Each bad field: where, and what it must be"),
        )
    }

    def __init__(
        self, detail: str, *, field: str, location: FieldLocation | str = FieldLocation.body
    ) -> None:
        super().__init__(
            detail,
            errors=[
                FieldError(
                    field=field,
                    location=FieldLocation(location),
                    message=detail,
                    type="value_error",
                )
            ],
        )


class TooManyRequests(AppError):
    """Over a limit (streams per token or per replica, agent reports per session): retry after
    `Retry-After` seconds."""

    status, slug, title = 429, "too-many-requests", "Too many requests"
    sends_headers = ("Retry-After",)

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class InternalError(AppError):
    """A fault of the server's: the body has no trace; quote `request_id`, under which the trace
    is logged."""

    status, slug, title = 500, "internal-error", "Internal server error"


class ServiceUnavailable(AppError):
    """Not ready to serve (starting, stopping, the pod watch not caught up): retry after
    `Retry-After` seconds."""

    status, slug, title = 503, "service-unavailable", "Service unavailable"
    sends_headers = ("Retry-After",)

    def __init__(self, detail: str, *, retry_after_s: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class DatabaseUnavailable(ServiceUnavailable):
    """The database is away (stopped, restarting, starting up, out of disk): nothing was
    changed; retry after `Retry-After` seconds."""

    slug = "database-unavailable"


class DatabaseBusy(ServiceUnavailable):
    """Every database connection of this replica is in use: nothing was changed; retry after
    `Retry-After` seconds."""

    slug = "database-busy"


class RouteNotFound(AppError):
    """No such path (the API is under /v1)."""

    status, slug, title = 404, "http-404", "Not found"


class MethodNotAllowed(AppError):
    """The path exists but not with this method: `Allow` lists the methods it has."""

    status, slug, title = 405, "http-405", "Method not allowed"
    sends_headers = ("Allow",)


class HTTPError(AppError):
    """Any other HTTP-level refusal of the framework's (none is known to happen)."""

    status, slug, title = 400, "http-error", "HTTP error"
    fixed_status = False


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_BASE + slug


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
    """The problem document: RFC 9457's members, `instance` and `request_id` always (null when
    not known), and the members its type carries (`errors`, `live_session_ids`)."""
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path if request is not None else None,
        "request_id": correlation_id.get(),
    }
    if errors is not None:
        body["errors"] = [error.model_dump(mode="json") for error in errors]
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: the problem types it can answer with, by status. The
    document (app.openapi) describes each status's problems, with those every operation can
    give (authentication, validation, the database away)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = documented.setdefault(error.status, {"description": error.title, PROBLEMS_KEY: []})
        entry[PROBLEMS_KEY].append(error.slug)
    return documented


PROBLEMS_KEY = "x-vdi-problems"  # read and removed by app.openapi


_LOCATIONS = frozenset(location.value for location in FieldLocation)


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    result = []
    for item in exc.errors():
        loc = [str(part) for part in item.get("loc", ())]
        where = loc[0] if loc else "body"
        location = FieldLocation(where) if where in _LOCATIONS else FieldLocation.body
        field = ".".join(loc[1:]) or where
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
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.database_errors.labels("request").inc()
    return problem_response(
        request,
        status=DatabaseUnavailable.status,
        slug=DatabaseUnavailable.slug,
        title=DatabaseUnavailable.title,
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
            status=ValidationFailed.status,
            slug=ValidationFailed.slug,
            title=ValidationFailed.title,
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
            status=DatabaseBusy.status,
            slug=DatabaseBusy.slug,
            title=DatabaseBusy.title,
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
        kinds: dict[int, type[AppError]] = {404: RouteNotFound, 405: MethodNotAllowed}
        kind = kinds.get(exc.status_code, HTTPError)
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.url.path}; the API is under /v1 (see /openapi.json)"
        return problem_response(
            request,
            status=exc.status_code,
            slug=kind.slug,
            title=kind.title if kind is not HTTPError else "HTTP error",
            detail=detail,
            headers=dict(exc.headers or {}),
        )
