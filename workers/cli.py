"""``fleet worker CLASS``: start one worker for a hardware class, on a worker host.

The command comes with the worker side (the ``agent_fleet.commands`` entry point ``worker``):
a host with the plain install submits and watches runs, a host with ``agent-fleet[workers]``
also runs them.
"""

from __future__ import annotations

import os
import sys

import click

from fleet.cli.common import config, console, fail
from fleet.config import ClassSpec, FleetConfig
from fleet.deploy.launch import host_lanes, worker_argv, worker_env
from fleet.sdk.devices import detect_gpus
from fleet.sdk.registry import registry
from workers.lanes import run_lanes


def _check_device(spec: ClassSpec, gpu: int) -> None:
    """``--device N`` names a GPU this host has, for a class that binds to one: else exit 2
    (a "gpu" worker on the CPU would share the gpu queue, silently slow)."""
    if spec.device != "cuda":
        fail(f"--device {gpu}: class '{spec.name}' binds to the CPU (device = {spec.device})", 2)
    report = detect_gpus()
    indexes = [g.index for g in report.gpus]
    if gpu not in indexes:
        have = ", ".join(f"{g.index} ({g.name})" for g in report.gpus) or f"none: {report.note}"
        fail(f"--device {gpu}: no such GPU on this host (GPUs: {have})", 2)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("cls", metavar="CLASS")
@click.option(
    "-c", "--concurrency", type=int, show_default="the class preset", help="Slots of this worker."
)
@click.option("-n", "--name", show_default="CLASS-PID@HOST", help="Worker node name.")
@click.option("-l", "--loglevel", default="INFO", help="Celery log level.")
@click.option(
    "--device",
    "gpu",
    type=click.IntRange(0),
    help="The GPU this worker uses (sets CUDA_VISIBLE_DEVICES): one worker per GPU.",
)
@click.option("--dry-run", is_flag=True, help="Print the celery command instead of running it.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context,
    cls: str,
    concurrency: int | None,
    name: str | None,
    loglevel: str,
    gpu: int | None,
    dry_run: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start one worker for hardware class CLASS with its preset.

    On a GPU host, a GPU class that lists several runtimes (the gpu preset: llama.cpp and
    CTranslate2) runs a process per runtime on the same GPU, a lane each with a queue of
    its own, started and stopped together as this one worker.

    Extra arguments after `--` go to `celery worker` unchanged. `--dry-run` prints the
    command, the device its processes bind to and the runtimes they may load.
    """
    cfg = config(ctx)
    if cls not in cfg.classes:
        fail(f"unknown class '{cls}' (configured: {', '.join(cfg.classes)})", 2)
    spec = cfg.classes[cls]
    if gpu is not None:
        _check_device(spec, gpu)
        # Before any CUDA library loads in the worker: it sees this GPU only, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        name = name or f"{cls}-gpu{gpu}-{os.getpid()}@%h"
    lanes = host_lanes(spec)
    launches = [
        (
            worker_argv(
                spec,
                concurrency=concurrency,
                name=name,
                loglevel=loglevel,
                extra=list(celery_args),
                lane=lane,
                events=cfg.task_events,
            ),
            worker_env(cfg, cls, concurrency=concurrency, lane=lane),
        )
        for lane in lanes
    ]
    if dry_run:
        _describe(cfg, spec, [argv for argv, _ in launches], lanes)
        return
    if len(launches) == 1:
        argv, env = launches[0]
        os.execve(argv[0], argv, env)
    sys.exit(run_lanes(launches))


def _describe(
    cfg: FleetConfig, spec: ClassSpec, argvs: list[list[str]], lanes: list[str | None]
) -> None:
    """What ``fleet worker --dry-run`` prints: each process's command, the device, the
    runtimes, and the lanes when the class runs one process per runtime here."""
    registry.load(cfg.op_modules, cfg.op_plugins)
    gpus = detect_gpus()
    if spec.device != "cuda":
        device = "cpu (the class binds to the CPU)"
    elif gpus.gpus:
        device = f"cuda:0 = {gpus.gpus[0].name} (GPU {gpus.gpus[0].index})"
    else:
        device = f"cpu ({gpus.note})"
    runtimes = ", ".join(sorted(registry.class_runtimes(spec.name, cfg))) or "none (plain Python)"
    for argv in argvs:  # one line each, to paste as it is
        console.print(" ".join(argv), highlight=False, soft_wrap=True)
    console.print(f"device: {device}\nruntimes: {runtimes}", highlight=False)
    if lanes != [None]:
        shown = ", ".join(f"{lane} (queue {spec.queue_for(lane)})" for lane in lanes if lane)
        console.print(f"lanes: a process per runtime on one GPU: {shown}", highlight=False)
