"""`reconciler` command line, one module per group of commands: one pass over a folder (passes), the daemon
(daemon), what runs and why (views), a person's answers (answers), evidence (evidence) and `models`.

A command's module is imported when that command runs (or `--help` lists it), not the other modules: a command
that asks a running daemon for its answer pays for click and its own module only."""

from __future__ import annotations

import gc
import importlib

import click

# command -> the module of reconciler.cli that defines it (under the same name)
COMMAND_MODULES = {
    **dict.fromkeys(("validate", "plan", "apply", "down", "schemas"), "passes"),
    **dict.fromkeys(("run", "sync"), "daemon"),
    **dict.fromkeys(("status", "host", "describe", "logs"), "views"),
    **dict.fromkeys(("approve", "deny", "rollback"), "answers"),
    **dict.fromkeys(("export", "verify", "forget"), "evidence"),
    "models": "models",
}
# Commands that do one bounded piece of work and exit. The cyclic garbage collector's passes over the objects their
# imports create (the models' schemas, ~150 passes) free next to nothing and cost 30 ms CPU of a 0.45 s status and
# 40 ms of a no-op apply over 20 containers; reference counting still frees what they drop. What runs on (the
# daemon, logs -f) keeps the collector; apply turns it on once the reconciler is open, what came before frozen.
ONE_SHOT = frozenset({"validate", "plan", "schemas", "status", "host", "describe", "logs", "apply"})


class CommandsOnDemand(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(f"reconciler.cli.{module}"), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=CommandsOnDemand)
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]), envvar="RECONCILER_LOG_FORMAT",
              help="json: one object per line (time, level, logger, message, resource).")
def main(log_level: str, log_format: str) -> None:
    """Keep what runs on this workstation equal to the desired state in PATH."""
    from reconciler.control import logfmt

    if click.get_current_context().invoked_subcommand in ONE_SHOT:
        gc.disable()

    logfmt.configure(log_level, log_format)
