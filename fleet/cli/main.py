"""The ``fleet`` command: the root group, its options, and where each command lives.

Every command is in a module of :mod:`fleet.cli`, one module per family, registered here by
name and imported only when it runs (or when ``--help`` lists it), so ``fleet --help`` and
``fleet status`` do not load the planner, the benchmark or the models. A third-party package
adds commands through the ``agent_fleet.commands`` entry points.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path

import click

from fleet.cli.common import fail
from fleet.config import load_config
from fleet.constants import COMMANDS_GROUP
from fleet.errors import ConfigError

# name -> "module:attribute", by family (the sections of `fleet --help`).
FAMILIES: dict[str, str] = {
    "fleet.cli.run": "Run a fleet and its workflows",
    "fleet.cli.signal": "Run a fleet and its workflows",
    "fleet.cli.host": "This host and its live workers",
    "fleet.cli.plan": "Plan a fleet",
    "fleet.cli.measure": "Measure",
    "fleet.cli.deploy": "Deploy a fleet elsewhere",
}
COMMANDS: dict[str, str] = {
    "up": "fleet.cli.run:up",
    "submit": "fleet.cli.run:submit",
    "trace": "fleet.cli.run:trace",
    "signal": "fleet.cli.signal:signal",
    "status": "fleet.cli.run:status",
    "validate": "fleet.cli.run:validate",
    "compile": "fleet.cli.run:compile_",
    "schema": "fleet.cli.run:schema",
    "doctor": "fleet.cli.host:doctor",
    "ops": "fleet.cli.host:ops",
    "metrics": "fleet.cli.host:metrics",
    "profile": "fleet.cli.host:profile",
    "gpu-check": "fleet.cli.host:gpu_check",
    "plan": "fleet.cli.plan:plan",
    "simulate": "fleet.cli.plan:simulate",
    "calibrate": "fleet.cli.plan:calibrate",
    "demo": "fleet.cli.measure:demo",
    "bench": "fleet.cli.measure:bench",
    "eval": "fleet.cli.measure:evaluate",
    "kube": "fleet.cli.deploy:kube",
}


WORKER_SIDE = "Run workers (on a worker host: agent-fleet[workers])"


def _plugin_family(name: str) -> str:
    """A plug-in command's section: the worker side's own (``fleet worker``), or the rest."""
    found = [e for e in entry_points(group=COMMANDS_GROUP) if e.name == name]
    return WORKER_SIDE if found and found[0].module.startswith("workers.") else PLUGINS


PLUGINS = "Commands from plug-ins"


class LazyGroup(click.Group):
    """A group whose commands are imported by name when first needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        plugins = sorted(e.name for e in entry_points(group=COMMANDS_GROUP))
        return list(COMMANDS) + [p for p in plugins if p not in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
        else:
            found = [e for e in entry_points(group=COMMANDS_GROUP) if e.name == cmd_name]
            if not found:
                return None
            command = found[0].load()
        if not isinstance(command, click.Command):
            raise TypeError(f"{cmd_name}: {command!r} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per family, then the plug-ins' commands."""
        sections: dict[str, list[tuple[str, str]]] = {}
        width = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            title = FAMILIES.get(COMMANDS.get(name, "").partition(":")[0]) or _plugin_family(name)
            sections.setdefault(title, []).append((name, command.get_short_help_str(width)))
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="FLEET_CONFIG",
    help="Config file (TOML or YAML); else ./fleet.toml if present.",
)
@click.option(
    "--broker",
    envvar="FLEET_BROKER_URL",
    show_default="redis://127.0.0.1:6379/0",
    help="Broker URL.",
)
@click.option(
    "--backend",
    envvar="FLEET_RESULT_BACKEND",
    show_default="the broker",
    help="Result backend and run store URL.",
)
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, broker: str | None, backend: str | None
) -> None:
    """Run agent workflows on a fleet of Celery workers grouped by hardware class.

    Each workflow step goes to a class queue (gpu, npu-lite, cpu, io) chosen when the step
    is sent, from the op's profile and the live workers. Start a local fleet with
    `fleet up`, submit with `fleet submit FILE`, watch with `fleet status` or Flower.
    """
    # The Celery app reads its configuration from the environment when first imported.
    if config_path:
        os.environ["FLEET_CONFIG"] = str(Path(config_path).resolve())
    if broker:
        os.environ["FLEET_BROKER_URL"] = broker
    if backend:
        os.environ["FLEET_RESULT_BACKEND"] = backend
    try:
        ctx.obj = {"cfg": load_config()}
    except ConfigError as exc:
        fail(str(exc), 2)


def main() -> None:
    from fleet.sdk.registry import OpModuleError

    try:
        cli(prog_name="fleet")
    except OpModuleError as exc:  # FLEET_OP_MODULES / op_modules names what is not there
        fail(str(exc), 2)


if __name__ == "__main__":
    main()
