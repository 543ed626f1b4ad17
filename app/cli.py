"""The command line: vdi-control serve | migrate | token create | openapi | settings | problems."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from app import __version__
from app.config import ConfigError, Settings, load_settings, settings_reference

if TYPE_CHECKING:
    from app.embedded import EmbeddedPostgres

log = structlog.get_logger("vdi.cli")


def _fail(message: str, code: int = 2) -> None:
    print(f"vdi-control: {message}", file=sys.stderr)
    raise SystemExit(code)


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: VDI_DATABASE_URL, or an embedded Postgres started now and stopped after."""
    with database_server(settings) as (url, _server):
        yield url


@contextmanager
def database_server(settings: Settings) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """The database URL and, when it is the embedded one, its server (to supervise). Called
    under the data dir's lock (data_dir_lock) where the embedded server is used: the server
    is this process's alone, and is stopped when the block ends, even one a killed
    predecessor left running."""
    if settings.database_url is not None:
        yield settings.database_url, None
        return
    from app.embedded import DATABASE_NAME, EmbeddedPostgres, ensure_database

    server = EmbeddedPostgres(settings.data_dir / "postgres", sole_owner=True)
    log.info("embedded postgres started", data_dir=str(settings.data_dir), pid=server.pid)
    try:
        asyncio.run(ensure_database(server.url(), DATABASE_NAME))
        yield server.url(DATABASE_NAME), server
    finally:
        server.stop()
        log.info("embedded postgres stopped")


@contextmanager
def data_dir_lock(settings: Settings, command: str) -> Iterator[None]:
    """One server per data dir: an exclusive lock on `<data dir>/serve.lock`, held while the
    command runs (the kernel drops it when the process dies, however it dies). A second
    `serve` (or a `migrate` beside a running server) stops with an error naming the holder,
    instead of joining its embedded Postgres and ending its sessions as a previous run's."""
    import fcntl
    import os

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "serve.lock"
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            _fail(
                f"the data dir {settings.data_dir} is in use by vdi-control ({holder}): one "
                "server per data dir. Stop that one, or give this one its own VDI_DATA_DIR."
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, {command}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _uses_data_dir(settings: Settings) -> bool:
    """The embedded database, or an in-process cluster (its desktops, its kubeconfig)."""
    return settings.database_url is None or settings.cluster in ("local", "simulated")


def ensure_schema(settings: Settings, url: str) -> None:
    from app.migrate import schema_status, upgrade

    current, head = schema_status(url)
    if current == head:
        return
    if settings.should_auto_migrate:
        log.info("migrating the schema", current=current, head=head)
        upgrade(url)
        return
    _fail(
        f"the database schema is at {current or 'nothing (empty database)'} but this version "
        f"needs {head}: run `vdi-control migrate` first (or set VDI_AUTO_MIGRATE=true)"
    )


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        _fail(f"configuration error: {error}")
        raise  # unreachable


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> None:
    from app.main import create_app
    from app.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, json=settings.log_json)
    host, port = args.host or settings.host, args.port or settings.port
    if settings.reconciler:
        from app.cluster.kube import ClusterError
        from app.runtimes import choose_cluster

        try:
            mode, _missing = choose_cluster(settings)
        except ClusterError as error:
            _fail(str(error))
        # `auto` resolved once, here: the API and the reconciler see the same cluster
        settings = settings.model_copy(update={"cluster": mode})
        if mode in ("local", "simulated") and "callback_url" not in settings.model_fields_set:
            # the agents (stand-in or local) call back into this very process
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            settings = settings.model_copy(update={"callback_url": f"http://{local}:{port}"})
    # uvicorn re-raises SIGTERM once it has shut down; make that an exception, so the embedded
    # database below is stopped instead of the process dying on the default handler.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.ExitStack() as stack:
        if _uses_data_dir(settings):
            stack.enter_context(data_dir_lock(settings, "serve"))
        url, server = stack.enter_context(database_server(settings))
        ensure_schema(settings, url)
        app = create_app(settings, url, database_server=server)
        asyncio.run(_serve(app, host, port, settings.agent_port, settings.shutdown_grace_s))


async def _serve(app: Any, host: str, port: int, agent_port: int, grace_s: float = 20.0) -> None:
    """The API on `port` and, with `agent_port`, once the API has started, the agents'
    callbacks alone there (app.httpserver.agent_only), both in this event loop and process."""
    import uvicorn

    from app.httpserver import agent_only, uvicorn_options

    main = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            proxy_headers=True,
            timeout_graceful_shutdown=int(grace_s),
            **uvicorn_options(),
        )
    )
    agents = uvicorn.Server(
        uvicorn.Config(
            agent_only(app),
            host=host,
            port=agent_port,
            log_config=None,
            lifespan="off",  # the app's lifespan is the main server's
            timeout_graceful_shutdown=int(grace_s),
            **uvicorn_options(),
        )
    )
    # signals are the main server's: it shuts down, then this one is told to
    agents.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(main.serve())
    listener: asyncio.Task[None] | None = None
    try:
        while agent_port and not main.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (uvicorn has no event for it)
        if agent_port and main.started:
            listener = asyncio.create_task(agents.serve())
            log.info("agents' callback listener", port=agent_port)
        await serving
    finally:
        agents.should_exit = True
        if listener is not None:
            await listener


def cmd_migrate(_args: argparse.Namespace) -> None:
    from app.migrate import schema_status, upgrade
    from app.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, json=settings.log_json)
    with contextlib.ExitStack() as stack:
        if settings.database_url is None:  # the embedded one: not beside a running server
            stack.enter_context(data_dir_lock(settings, "migrate"))
        url = stack.enter_context(database(settings))
        upgrade(url)
        current, _head = schema_status(url)
        print(f"schema at {current}")


def cmd_token_create(args: argparse.Namespace) -> None:
    from app.auth.schemas import Scope
    from app.auth.service import create_token
    from app.db import create_engine, create_sessionmaker
    from app.observability import configure_logging

    try:
        scopes = [Scope(scope) for scope in args.scope]
    except ValueError:
        _fail(f"unknown scope in {args.scope}; scopes are {', '.join(s.value for s in Scope)}")
    settings = _settings()
    configure_logging("WARNING", json=settings.log_json)

    async def _create(url: str) -> str:
        engine = create_engine(url, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as db, db.begin():
                _token, plaintext = await create_token(db, args.name, scopes)
            return plaintext
        finally:
            await engine.dispose()

    with database(settings) as url:
        ensure_schema(settings, url)
        print(asyncio.run(_create(url)))


def cmd_openapi(args: argparse.Namespace) -> None:
    from app.main import create_app

    # The document does not depend on secrets or the database: build it from defaults.
    document = create_app(Settings(), "postgresql://unused@/unused").openapi()
    print(json.dumps(document, indent=2 if args.pretty else None, sort_keys=False))


def cmd_settings(_args: argparse.Namespace) -> None:
    print(settings_reference(), end="")


def cmd_problems(_args: argparse.Namespace) -> None:
    import app.main  # noqa: F401  (defines every problem type)
    from app.openapi import problems_reference

    print(problems_reference(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdi-control", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the API (embedded Postgres unless VDI_DATABASE_URL)"
    )
    serve.add_argument("--host", help="listen address (VDI_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (VDI_PORT, default 8080)")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to this version")
    migrate.set_defaults(handler=cmd_migrate)

    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token and print it")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        required=True,
        help="admin, sessions:read, sessions:write, sessions:connect, templates:write",
    )
    create.set_defaults(handler=cmd_token_create)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--pretty", action="store_true")
    openapi.set_defaults(handler=cmd_openapi)

    settings = commands.add_parser(
        "settings", help="print every VDI_ setting, its default and meaning (Markdown)"
    )
    settings.set_defaults(handler=cmd_settings)

    problems = commands.add_parser(
        "problems", help="print every problem type the API sends, and its meaning (Markdown)"
    )
    problems.set_defaults(handler=cmd_problems)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)
