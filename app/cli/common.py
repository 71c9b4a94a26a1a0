"""What every CLI command shares: consoles, the context the commands run in (which
settings, which stack, how errors are told), the service, errors, and how a CLI is built
from groups of commands and run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from app.orders.messages import Step
from app.platform.settings import Settings, settings_problem

if TYPE_CHECKING:
    # The service pulls in temporalio and SQLAlchemy (about a second); stack commands and
    # --help do without.
    from app.service.layer import ServiceLayer


T = TypeVar("T")
S = TypeVar("S", bound=Settings)

STEPS = tuple(step.value for step in Step)
STATE_STYLE = {
    "COMPLETED": "bold green",
    "CANCELLED": "bold yellow",
    "FAILED": "bold red",
}


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by programs and grep: don't fold ids at 80 columns. Rich still
    # drops colour by itself when the stream is not a terminal.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=stderr)


out = _console()
err = _console(stderr=True)


class CliError(Exception):
    """An operational failure with a one-line message (and optional detail lines)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


STACK = "Stack"
ORDERS = "Orders"
INSPECT = "Monitoring & debugging"
TESTING = "Testing"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# Named when the stack a command talks to is not reachable (how to start it).
START_HINT = "python scripts/cli.py start"

# One line (and optional detail) for an error of a layer the CLI does not know; None for
# errors it does not explain.
Explainer = Callable[[BaseException], tuple[str, str] | None]


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__


def _db_address(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(settings.database_url_plain)
    except Exception:
        return "DATABASE_URL"
    return f"{url.host}:{url.port or 5432}"


def db_failure(
    exc: BaseException, settings: Settings, start_hint: str = START_HINT
) -> CliError | None:
    """A one-line explanation for database failures; None for anything else."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    unreachable = (
        OSError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        # Plain SQL on the driver (app/platform/sql.py) raises asyncpg's own errors.
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.CannotConnectNowError,
    )
    if isinstance(exc, unreachable):
        return CliError(
            f"PostgreSQL is not reachable at {_db_address(settings)} ({_first_line(exc)}); "
            f"is the stack running? ({start_hint})"
        )
    if isinstance(exc, sa_exc.SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        hint = " (run `python -m app.platform.migrate`)" if "does not exist" in str(orig) else ""
        return CliError(f"database error: {_first_line(orig)}{hint}")
    if isinstance(exc, asyncpg.PostgresError):
        return CliError(f"database error: {_first_line(exc)}")
    return None


@asynccontextmanager
async def open_service(
    settings: Settings, start_hint: str = START_HINT
) -> AsyncIterator[ServiceLayer]:
    """The service layer (commands, status reads, inspection) on a fresh Temporal client and
    a small DB pool (closed on exit)."""
    from app.platform.db import engine_from_settings, session_factory
    from app.platform.temporal import connect_client
    from app.service.layer import ServiceLayer

    try:
        client = await connect_client(settings)
    except RuntimeError as exc:  # the SDK reports connection failures as RuntimeError
        raise CliError(
            f"Temporal is not reachable at {settings.temporal_target}; "
            f"is the stack running? ({start_hint})",
        ) from exc
    engine = engine_from_settings(settings, pool_size=5)
    try:
        yield ServiceLayer.build(client, session_factory(engine), settings)
    except Exception as exc:
        failure = db_failure(exc, settings, start_hint)
        if failure is not None:
            raise failure from exc
        raise
    finally:
        with contextlib.suppress(Exception):
            await engine.dispose()


def as_configured(settings: Settings) -> Settings:
    return settings


@dataclass(frozen=True)
class CliContext(Generic[S]):
    """What the commands are pointed at, given by the entry point that runs them (Typer's
    `ctx.obj`): the operator CLI reads `Settings` and uses them as they are; the dev
    launcher (devstack/cli) reads its own settings and follows the embedded stack's ports."""

    settings_type: type[S]
    # The settings commands talk to the service with, from those read.
    target: Callable[[S], Settings]
    start_hint: str = START_HINT
    explainers: tuple[Explainer, ...] = ()

    def load_settings(self) -> S:
        try:
            return self.settings_type()
        except ValidationError as exc:
            raise CliError(settings_problem(exc)) from None

    def target_settings(self) -> Settings:
        return self.target(self.load_settings())

    def with_service(
        self, call: Callable[[ServiceLayer], Awaitable[T]], settings: Settings | None = None
    ) -> T:
        """Run one async operation against the stack the settings point at."""
        target = settings or self.target_settings()

        async def run() -> T:
            async with open_service(target, self.start_hint) as services:
                return await call(services)

        return asyncio.run(run())

    def db_failure(self, exc: BaseException, settings: Settings) -> CliError | None:
        return db_failure(exc, settings, self.start_hint)

    def explain_error(self, exc: BaseException) -> tuple[str, str]:
        return explain_error(exc, self.explainers)


OPERATOR: CliContext[Settings] = CliContext(Settings, as_configured)


def cli_context(ctx: typer.Context) -> CliContext[Any]:
    """The context the entry point runs the commands with (the operator CLI's if none)."""
    given = ctx.find_object(CliContext)
    return OPERATOR if given is None else given


def report_error(exc: BaseException, explainers: Iterable[Explainer] = ()) -> int:
    """Print an operational error (one line, then any detail lines); the exit code."""
    message, detail = explain_error(exc, explainers)
    err.print(Text(f"error: {message}", style="bold red"))
    if detail:
        err.print(Text(detail.rstrip()))
    return 1


def explain_error(exc: BaseException, explainers: Iterable[Explainer] = ()) -> tuple[str, str]:
    """(one-line message, detail) for an operational error."""
    from app.service.errors import ServiceError

    if isinstance(exc, CliError):
        return exc.message, exc.detail
    if isinstance(exc, ServiceError):
        return exc.shown, ""
    for explain in explainers:
        explained = explain(exc)
        if explained is not None:
            return explained
    from temporalio.service import RPCError

    if isinstance(exc, RPCError):
        return f"Temporal error: {_first_line(exc)}", ""
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the stack", ""
    return f"unexpected {type(exc).__name__}: {_first_line(exc)}", ""


def _flags_without_type(command: Any) -> None:
    """Help shows `--json`, not `--json <bool>`: a flag takes no value, so it shows no type
    (the Typer in use labels every option with its type, flags and `--help` included)."""
    ctx = typer.Context(command)
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is not None and getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_type(sub)


def build_app(groups: Iterable[typer.Typer]) -> typer.Typer:
    """A CLI of these groups of commands (listed in this order), run with `run_app`."""
    app = typer.Typer(
        name="cli.py",
        help="Order fulfillment on Temporal: operate orders, inspect workflows (and, from scripts/cli.py, run the embedded stack).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    for group in groups:
        app.add_typer(group)  # no name: its commands join the top level
    return app


def run_app(app: typer.Typer, context: CliContext[Any]) -> int:
    """Run the CLI in `context` (every command's `ctx.obj`); the exit code."""
    try:
        command = typer.main.get_command(app)
        _flags_without_type(command)
        command(obj=context)  # standalone mode: Click turns usage errors into SystemExit(2)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        return report_error(exc, context.explainers)
    return 0


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown once output is flushed.

    The Temporal SDK's Rust threads can abort a finishing interpreter (SIGABRT,
    "PyGILState_Release ... finalizing", temporalio/sdk-python#300) after the command
    itself succeeded; nothing is left to clean up at this point.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
