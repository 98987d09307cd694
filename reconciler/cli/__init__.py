"""`reconciler` command line, one module per group of commands: one pass over a folder (passes), the daemon
(daemon), what runs and why (views), a person's answers (answers), evidence (evidence) and `models`."""

from __future__ import annotations

import click

from reconciler.cli import answers, daemon, evidence, models, passes, views
from reconciler.control import logfmt


@click.group()
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]), envvar="RECONCILER_LOG_FORMAT",
              help="json: one object per line (time, level, logger, message, resource).")
def main(log_level: str, log_format: str) -> None:
    """Keep what runs on this workstation equal to the desired state in PATH."""
    logfmt.configure(log_level, log_format)


for command in (passes.validate, passes.plan, passes.apply, passes.down, passes.schemas, daemon.run, daemon.sync,
                views.status, views.host, views.describe, views.logs, answers.approve, answers.deny, answers.rollback,
                evidence.export, evidence.verify, evidence.forget, models.models):
    main.add_command(command)
