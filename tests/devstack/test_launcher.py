"""The dev launcher's settings and entry point, without a stack: the stack's own settings
read from the variables the docs name, and the launcher built from the operator CLI's
commands without changing them."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import ValidationError

from app.cli.common import OPERATOR, build_app, out
from app.cli.main import COMMAND_GROUPS
from app.platform.settings import Settings, settings_problem
from devstack.cli import build_launcher
from devstack.cli.context import launcher_context
from devstack.cli.demo import DemoRun, print_summary
from devstack.stack.config import StackSettings

pytestmark = pytest.mark.unit

STACK_VARIABLES = {
    "RUN_DIR": "run_dir",
    "POSTGRES_PORT": "postgres_port",
    "TEMPORAL_PORT": "temporal_port",
    "TEMPORAL_UI_PORT": "temporal_ui_port",
    "TEMPORAL_NAMESPACE_RETENTION": "temporal_namespace_retention",
}


def test_the_stack_settings_read_the_documented_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "RUN_DIR": str(tmp_path),
        "POSTGRES_PORT": "15432",
        "TEMPORAL_PORT": "17233",
        "TEMPORAL_UI_PORT": "18233",
        "TEMPORAL_NAMESPACE_RETENTION": "3d",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = StackSettings(_env_file=None)  # type: ignore[call-arg]
    assert str(settings.run_dir) == str(tmp_path)
    assert (settings.postgres_port, settings.temporal_port, settings.temporal_ui_port) == (
        15432,
        17233,
        18233,
    )
    assert settings.temporal_namespace_retention == "3d"
    assert set(STACK_VARIABLES.values()) <= settings.model_fields_set
    # The product's settings know nothing of the embedded stack.
    assert not set(STACK_VARIABLES.values()) & set(Settings.model_fields)


def test_a_bad_stack_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_PORT", "abc")
    with pytest.raises(ValidationError) as raised:
        StackSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings_problem(raised.value).startswith("invalid setting POSTGRES_PORT:")


def _commands(app: typer.Typer) -> dict[str, list[str]]:
    """Each command's option names, as --help lists them."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return {
        name: [opt for param in command.params for opt in getattr(param, "opts", [])]
        for name, command in group.commands.items()
    }


def test_the_launcher_is_the_operator_cli_plus_the_stack_commands() -> None:
    operator = _commands(build_app(COMMAND_GROUPS))
    launcher = _commands(build_launcher())
    # The operator's commands first, in their order, each with --compose added.
    assert list(launcher)[: len(operator)] == list(operator)
    for name, options in operator.items():
        assert "--compose" not in options
        assert launcher[name] == [*options, "--compose"]
    # Then the stack's, in this order (others may join them).
    stack = list(launcher)[len(operator) :]
    expected = [
        "temporal",
        "start",
        "stop",
        "restart",
        "ps",
        "logs",
        "demo",
        "chaos",
        "bench",
        "backup",
        "restore",
        "retention",
    ]
    assert [name for name in stack if name in expected] == expected
    # Building the launcher leaves the operator CLI as it was.
    assert _commands(build_app(COMMAND_GROUPS)) == operator


def test_each_entry_point_gives_its_own_context() -> None:
    assert OPERATOR.settings_type is Settings
    context = launcher_context()
    assert context.settings_type is StackSettings
    assert context.explainers and context.start_hint == OPERATOR.start_hint


def test_the_demo_summary_keeps_each_orders_names_on_its_first_line() -> None:
    """A long row (many attempts, a long note) wraps its long cells, never the scenario or
    the order id, so a reader of piped output greps one line per order."""
    attempts = {"RECEIVE": 2, "VALIDATE": 3, "MANUAL_REVIEW": 1, "PAY": 4, "SHIP": 3}
    runs = [
        DemoRun(
            f"scenario number {n} with a long name",
            f"demo-235959abcd-order-{n}-with-a-long-id",
            "ANY",
            view={"state": "FAILED", "reason": "deadline_exceeded", "attempts": attempts},
            notes=["approved", "still closing when the demo stopped waiting"] * 2,
        )
        for n in range(3)
    ]
    with out.capture() as captured:
        print_summary(runs)
    lines = captured.get().splitlines()
    for run in runs:
        [line] = [line for line in lines if run.scenario in line]
        assert run.order_id in line
