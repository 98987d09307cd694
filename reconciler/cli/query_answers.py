"""The daemon's side of quick answers: a client's request runs the very command it would have run, in the daemon
(where everything it imports is already loaded), read-only, for the daemon's own folder and state directory only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from reconciler.cli import passes, views
from reconciler.cli.common import default_state_dir
from reconciler.cli.query_client import answering
from reconciler.control.query_server import Answer, Declined

READ_ONLY = {command.name: command for command in (views.status, views.describe, views.logs, passes.validate)}


def answer_for(root: Path, state_dir: Path) -> Answer:
    def answer(request: dict[str, Any]) -> int:
        command = READ_ONLY.get(str(request.get("command")))
        cwd, raw = Path(str(request.get("cwd"))), request.get("params")
        if command is None or command.callback is None or not cwd.is_absolute() or not isinstance(raw, dict):
            raise Declined(f"not a read-only command: {request.get('command')!r}")
        context = click.Context(command, info_name=command.name)
        values = {param.name: _value(param, raw.get(param.name), cwd, context) for param in command.params
                  if param.name is not None}
        path = values["path"]
        state = values.get("state_dir") or default_state_dir(path)
        if values.get("git_url") is not None or values.get("follow_"):
            raise Declined("--git and --follow are answered by the command itself")
        if (path.resolve(), state.resolve()) != (root.resolve(), state_dir.resolve()):
            raise Declined(f"this daemon watches {root} with state directory {state_dir}")
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


def _value(param: click.Parameter, raw: object, cwd: Path, context: click.Context) -> object:
    value = None if raw is None else param.type.convert(raw, param, context)
    return cwd / value if isinstance(value, Path) and not value.is_absolute() else value
