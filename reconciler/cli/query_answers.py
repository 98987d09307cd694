"""The daemon's side of quick answers: a client's request runs the very command it would have run, in the daemon
(where everything it imports is already loaded), read-only, for the daemon's own folder and state directory only; and
`apply`'s pass, run by the daemon's loop (cli/asked_apply.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli import passes, views
from reconciler.cli.common import default_state_dir
from reconciler.cli.query_client import answering
from reconciler.control.query_server import Answer, Declined

if TYPE_CHECKING:
    from reconciler.cli.asked_apply import AskedApplies

READ_ONLY = {command.name: command for command in (views.status, views.describe, views.logs, passes.validate)}


def answer_for(root: Path, state_dir: Path, applies: AskedApplies | None = None) -> Answer:
    """`applies`: runs the passes `apply` asks for (None: apply is declined, and finds the state directory busy)."""
    answered = {**READ_ONLY, **({passes.apply.name: passes.apply} if applies is not None else {})}

    def answer(request: dict[str, Any], gone: threading.Event) -> int:
        command = answered.get(str(request.get("command")))
        cwd, raw = Path(str(request.get("cwd"))), request.get("params")
        if command is None or command.callback is None or not cwd.is_absolute() or not isinstance(raw, dict):
            raise Declined(f"not a command this daemon runs for a client: {request.get('command')!r}")
        context = click.Context(command, info_name=command.name)
        values = _values(command.params, raw, cwd, context)
        path = values["path"]
        state = values.get("state_dir") or default_state_dir(path)
        if values.get("git_url") is not None or values.get("follow_"):
            raise Declined("--git and --follow are answered by the command itself")
        if (path.resolve(), state.resolve()) != (root.resolve(), state_dir.resolve()):
            raise Declined(f"this daemon watches {root} with state directory {state_dir}")
        if command is passes.apply and applies is not None:
            return _apply(applies, values, request.get("logging"), gone)
        answering(True)
        try:
            with context:
                context.invoke(command.callback, **values)
        except click.ClickException as error:
            error.show()
            return error.exit_code
        except click.exceptions.Exit as done:
            return done.exit_code
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else 1
        finally:
            answering(False)
        return 0

    return answer


def _values(params: list[click.Parameter], raw: dict[str, Any], cwd: Path, context: click.Context) -> dict[str, Any]:
    """The request's values of `params`; one that does not convert is declined: nothing was done for it."""
    try:
        return {param.name: _value(param, raw.get(param.name), cwd, context) for param in params
                if param.name is not None}
    except click.ClickException as error:
        raise Declined(error.format_message()) from None


def _value(param: click.Parameter, raw: object, cwd: Path, context: click.Context) -> object:
    value = None if raw is None else param.type.convert(raw, param, context)
    return cwd / value if isinstance(value, Path) and not value.is_absolute() else value


def _apply(applies: AskedApplies, values: dict[str, Any], logging: object, gone: threading.Event) -> int:
    """`logging`: the client's --log-level and --log-format: the log lines about the pass's resources are printed as
    a one-shot apply prints them. `gone`: the client left; its --wait ends."""
    from reconciler.cli import main
    from reconciler.cli.asked_apply import Options

    if None in (values["wait"], values["timeout"], values["min_ready_seconds"], values["allow_empty"]):
        raise Declined("apply's options are missing from the request")
    if values["allow_empty"] and not applies.allow_empty:
        raise Declined("--allow-empty: this daemon holds an empty desired state (it runs without --allow-empty)")
    context = click.Context(main, info_name="reconciler")
    raw = logging if isinstance(logging, dict) else {}
    log = _values(main.params, raw, Path("/"), context)
    code, lines = applies.apply(Options(bool(values["wait"]), float(values["timeout"]),
                                        float(values["min_ready_seconds"]), str(log["log_level"] or "INFO"),
                                        str(log["log_format"] or "text")), gone)
    for line in lines:
        click.echo(line, err=True)
    return code
