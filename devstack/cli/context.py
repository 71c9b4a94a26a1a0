"""The context the dev launcher runs every command in: its own settings (the product's plus
the embedded stack's), the embedded stack as the target of the operator commands, the
stack's errors told with their log lines, and `--compose` on the operator commands."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Annotated, Any

import typer

from app.cli.common import CliContext, cli_context
from devstack.stack.addresses import client_settings
from devstack.stack.compose import compose_client_settings
from devstack.stack.config import StackError, StackSettings

COMPOSE_START_HINT = "python scripts/cli.py start --compose"


def launcher_context(
    settings_type: type[StackSettings] = StackSettings,
) -> CliContext[StackSettings]:
    """Addresses follow the embedded stack's ports (fault injection on, as the dev stack
    allows); a failure of the stack is told with its log's last lines."""
    return CliContext(settings_type, client_settings, explainers=(explain_stack_error,))


def launcher(ctx: typer.Context) -> CliContext[StackSettings]:
    """The launcher's context, as `main` gave it to the commands."""
    context: CliContext[StackSettings] = cli_context(ctx)
    return context


def explain_stack_error(exc: BaseException) -> tuple[str, str] | None:
    if not isinstance(exc, StackError):
        return None
    # Only this run's lines: the log is appended to across starts.
    lines = exc.log_tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
    tail = "\n".join(lines[starts[-1] + 1 :] if starts else lines).strip()
    if not tail:
        return exc.message, ""
    where = f" ({exc.log_path})" if exc.log_path else ""
    return exc.message, f"last log lines{where}:\n{tail}"


ComposeTargetOpt = Annotated[
    bool,
    typer.Option(
        "--compose",
        help="Talk to the docker compose stack (its published ports and POSTGRES_PASSWORD) "
        "instead of the embedded stack.",
    ),
]


def with_compose_flag(groups: Iterable[typer.Typer]) -> list[typer.Typer]:
    """Copies of the operator's command groups (app/cli: list, status, approve...) whose
    commands have a `--compose` flag that points them at the compose stack instead of the
    embedded one. The commands stay as app/cli defines them, whatever options they have."""
    flagged = []
    for group in groups:
        flagged_group = typer.Typer()
        for info in group.registered_commands:
            command = copy.copy(info)
            if info.callback is not None:
                command.callback = _with_compose_flag(info.callback)
            flagged_group.registered_commands.append(command)
        flagged.append(flagged_group)
    return flagged


def _with_compose_flag(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original, eval_str=True)
    # Every operator command takes Typer's context (it holds the CliContext).
    ctx_name = next(
        name for name, param in signature.parameters.items() if param.annotation is typer.Context
    )

    @wraps(original)
    def command(*args: Any, compose: bool = False, **kwargs: Any) -> Any:
        if compose:
            # This run of the command alone talks to the compose stack.
            ctx: typer.Context = kwargs[ctx_name]
            ctx.obj = dataclasses.replace(
                cli_context(ctx), target=compose_client_settings, start_hint=COMPOSE_START_HINT
            )
        return original(*args, **kwargs)

    flag = inspect.Parameter(
        "compose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ComposeTargetOpt
    )
    params = [*signature.parameters.values(), flag]
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
