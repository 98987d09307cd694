"""The daemon's commands: run (watch a folder or follow a git branch) and sync (make it fetch now)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from reconciler.cli import git as cli_git
from reconciler.cli.common import default_state_dir, locked, path_argument, state_option


@click.command()
@path_argument
@state_option
@click.option("--resync", default=30.0, show_default=True, help="Seconds between full passes when nothing happens.")
@click.option("--allow-empty", is_flag=True, help="Prune everything even when the desired state becomes empty.")
@click.option("--metrics-address", metavar="HOST:PORT", envvar="RECONCILER_METRICS_ADDRESS",
              help="Serve Prometheus metrics there (loopback only), e.g. 127.0.0.1:9464. Off by default.")
@click.option("--model-rehash-hours", default=24.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Hash each cached model in full at least this often (it is also hashed before every start).")
@cli_git.git_options
@click.option("--interval", default="60s", show_default=True, help="With --git: how often to fetch (30s, 5m, 1h).")
@click.option("--verify-signatures", "allowed_signers", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              metavar="ALLOWED_SIGNERS", help="With --git: apply only commits signed by a key in this file "
                                              "(git's gpg.ssh.allowedSignersFile format).")
def run(path: Path, state_dir: Path | None, resync: float, allow_empty: bool, metrics_address: str | None,
        model_rehash_hours: float, git_url: str | None, branch: str, git_path: str, interval: str,
        allowed_signers: Path | None) -> None:
    """The daemon: watch PATH (or follow --git) and converge on every change, exit and resync. SIGTERM leaves
    workloads running."""
    from reconciler.cli.asked_apply import AskedApplies
    from reconciler.cli.query_answers import answer_for
    from reconciler.control.daemon import Daemon
    from reconciler.control.gitops import GITOPS
    from reconciler.control.metrics import Metrics, loopback_address
    from reconciler.control.query_server import QueryServer
    from reconciler.control.reconciler import Reconciler

    if git_url is not None:
        git_interval = cli_git.seconds(interval)
        state_dir = state_dir or cli_git.git_state_dir(git_url, branch, git_path)
        (state_dir / GITOPS).mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir = state_dir or default_state_dir(path)
    metrics = None
    if metrics_address:
        try:
            host, port = loopback_address(metrics_address)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
        metrics = Metrics()
        try:
            metrics.serve(host, port)
        except OSError as error:
            raise click.ClickException(f"--metrics-address {metrics_address}: {error.strerror or error}") from None
    with locked(state_dir / GITOPS if git_url else path, state_dir, "run"):  # before the follower touches anything
        follower = None
        if git_url is not None:
            follower = cli_git.follower(git_url, branch, git_path, state_dir, allowed_signers)
            prepared = follower.poll()
            if prepared is not None:
                follower.switch(prepared)
            if follower.status.last_applied_revision is None:
                raise click.ClickException("\n".join(["no valid revision to apply yet", *cli_git.summary(follower.status)]))
            path = follower.desired_root
        daemon_box: list[Daemon] = []
        source = {} if follower is None else {
            "revision": lambda: follower.status.last_applied_revision,
            "channel": f"git {follower.status.url} (branch {branch}, path {follower.path})"}
        reconciler = Reconciler(path, state_dir, allow_empty=allow_empty, metrics=metrics,
                                on_exit=lambda name: daemon_box[0].process_exited(name) if daemon_box else None,
                                on_engine_back=lambda: daemon_box[0].resync_now() if daemon_box else None,
                                on_model_fetched=lambda: daemon_box[0].resync_now() if daemon_box else None,
                                **source)  # type: ignore[arg-type]
        daemon = Daemon(reconciler, resync_seconds=resync, model_rehash_seconds=model_rehash_hours * 3600,
                        follower=follower, git_interval=git_interval if follower else 60.0)
        daemon_box.append(daemon)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: daemon.stop())
        queries = QueryServer(state_dir, answer_for(path, state_dir, None if follower else AskedApplies(daemon)))
        queries.start()
        try:
            daemon.run()
        finally:
            queries.stop()


@click.command()
@state_option
@cli_git.git_options
def sync(state_dir: Path | None, git_url: str | None, branch: str, git_path: str) -> None:
    """Make the daemon following --git fetch now, instead of at its next interval."""
    from reconciler.control.gitops import GITOPS, request_sync

    if git_url is None and state_dir is None:
        raise click.UsageError("say which daemon: --git URL [--branch] [--path], or --state-dir")
    home = (state_dir or cli_git.git_state_dir(git_url or "", branch, git_path)) / GITOPS
    if not home.is_dir():
        raise click.ClickException(f"{home}: no daemon follows a git branch with this state directory")
    request_sync(home.parent)
    click.echo("asked the daemon to fetch now; `reconciler status --git ...` shows the revision in force")
