"""``fleet signal``: send a signal to a run that waits (``op: wait.signal``)."""

from __future__ import annotations

import json
from typing import Any

import click

from fleet.cli.common import config, console, fail
from fleet.config import redact


@click.command()
@click.argument("run_id")
@click.argument("name")
@click.option(
    "--data",
    "data_json",
    default="null",
    show_default=True,
    help="The signal's payload, as JSON (the waiting node's output 'data'; at most 64 KiB).",
)
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, data_json: str) -> None:
    """Send signal NAME to run RUN_ID: the node that waits on it goes on with --data.

    A signal sent before its node waits is kept for that node. An unknown or ended run, a
    name the run does not wait on, or data that is not JSON is refused (exit 2) and
    changes nothing. It writes into the run: it needs the fleet's credentials, as submit
    does.

        fleet signal 3f2a... approval --data '{"approved": true, "by": "ana"}'
    """
    import redis

    from fleet.client.client import Fleet
    from fleet.deploy.local import broker_reachable
    from fleet.engine.waits import SignalError

    cfg = config(ctx)
    try:
        data: Any = json.loads(data_json)
    except ValueError as exc:
        fail(f"--data is not JSON: {exc}", 2)
    if not broker_reachable(cfg.backend_url):
        fail(f"cannot reach the run store at {redact(cfg.backend_url)} (is the fleet up?)")
    try:
        done = Fleet().signal(run_id, name, data)
    except SignalError as exc:
        fail(str(exc), 2)
    except redis.RedisError as exc:
        fail(f"cannot reach the run store at {redact(cfg.backend_url)}: {exc}")
    if done.outcome == "resumed":
        console.print(f"run {run_id}: node '{done.path}' took signal '{name}' and goes on")
    else:
        console.print(f"run {run_id}: signal '{name}' kept for the node that will wait on it")
