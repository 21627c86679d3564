"""``fleet doctor``: what each class's worker processes will run on, and what is wrong.

For the host: the NVIDIA GPUs the driver reports (NVML; nothing is imported to find out). For
each native runtime an op module registered (llama.cpp, CTranslate2, torch, ...): its version
and whether it can use the GPU -- each probed in a process of its own, because two CUDA
runtimes in one process can crash it. For each configured class: the device its processes
bind to, the runtimes its preloaded models and eligible ops use, and the problems, each with
its fix. Runs on a CPU-only machine too, and says so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.config import ClassSpec, FleetConfig, load_config
from fleet.sdk.devices import GpuReport, detect_gpus
from fleet.sdk.registry import Registry, registry

PROBE_TIMEOUT_S = 120


@dataclass
class RuntimeReport:
    name: str
    installed: bool
    version: str | None = None
    gpu: bool | None = None  # can this build use an NVIDIA GPU
    devices: int | None = None  # GPUs it sees
    error: str | None = None
    needs: str | None = None  # why a build that sees the GPU cannot use it (a library)


@dataclass
class ClassReport:
    name: str
    queue: str
    pool: str
    concurrency: int
    device: str  # configured: cuda or cpu
    binds_to: str  # what its processes will really use: cuda:0, cpu
    runtimes: list[str]  # native runtimes its processes may load
    preload: list[str]
    problems: list[str] = field(default_factory=list)  # wrong, with the fix
    notes: list[str] = field(default_factory=list)  # worth knowing


@dataclass
class DoctorReport:
    host: str
    gpus: GpuReport
    runtimes: dict[str, RuntimeReport]
    classes: list[ClassReport]
    problems: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(name: str) -> RuntimeReport:
    """Ask one runtime about itself, in a fresh process (so no two runtimes share one)."""
    code = (
        "import json, sys; from fleet.diagnostics.doctor import _probe_here; "
        f"print(json.dumps(_probe_here({name!r})))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return RuntimeReport(name, True, error=f"probe failed: {tail}")
        return RuntimeReport(**json.loads(lines[-1]))
    except subprocess.TimeoutExpired:
        return RuntimeReport(name, True, error=f"probe took over {PROBE_TIMEOUT_S} s")


def _probe_here(name: str) -> dict[str, Any]:
    cfg = load_config()
    registry.load(cfg.op_modules, cfg.op_plugins)
    runtime = registry.runtime(name)
    try:
        found = runtime.probe()
    except ImportError as exc:
        return asdict(RuntimeReport(name, False, error=str(exc)))
    return asdict(RuntimeReport(name, True, **found))


def _class_report(
    spec: ClassSpec,
    cfg: FleetConfig,
    registry: Registry,
    gpus: GpuReport,
    runtimes: dict[str, RuntimeReport],
) -> ClassReport:
    loads = sorted(registry.class_runtimes(spec.name, cfg))
    on_gpu = spec.device == "cuda" and bool(gpus.gpus)
    report = ClassReport(
        spec.name,
        spec.queue_name,
        spec.pool,
        spec.concurrency,
        spec.device,
        f"cuda:{gpus.gpus[0].index}" if on_gpu else "cpu",
        loads,
        list(spec.preload),
    )
    if spec.device == "cuda" and not gpus.gpus:
        report.notes.append("binds to cuda, but there is no GPU here: it runs on the CPU")
    unknown = [p for p in spec.preload if p not in registry.preloaders()]
    for name in unknown:
        report.problems.append(f"preload '{name}' is no registered preloader")
    for name in loads:
        found = runtimes.get(name)
        if on_gpu and found is not None and found.installed and found.gpu is False:
            fix = registry.runtime(name).gpu_fix
            why = found.needs or "a CPU build"
            report.problems.append(f"{name} cannot use the GPU here ({why}): {fix}")
    if spec.lanes:
        shown = ", ".join(f"{r} (queue {spec.queue_for(r)})" for r in spec.lanes)
        where = "on this host" if on_gpu else "on a GPU host"
        report.notes.append(f"a process per runtime {where}, on one GPU: {shown}")
    gpu_runtimes = [n for n in loads if registry.runtime(n).gpu_exclusive]
    if on_gpu and len(gpu_runtimes) > 1 and spec.runtimes is None:
        report.problems.append(
            f"its processes may load {', '.join(gpu_runtimes)} on one GPU: set "
            f"classes.{spec.name}.runtimes to one of them (torch and llama.cpp crash each other)"
        )
    return report


def diagnose(cfg: FleetConfig, registry: Registry) -> DoctorReport:
    gpus = detect_gpus()
    names = sorted({n for c in cfg.classes for n in registry.class_runtimes(c, cfg)})
    runtimes = {name: probe(name) for name in names}
    classes = [_class_report(s, cfg, registry, gpus, runtimes) for s in cfg.classes.values()]
    problems, notes = [], []
    if gpus.gpus:
        shown = ", ".join(
            f"{g.index}: {g.name} ({g.free_mb}/{g.total_mb} MB free)" for g in gpus.gpus
        )
        notes.append(f"NVIDIA driver {gpus.driver}; GPUs {shown}")
    else:
        notes.append(f"no NVIDIA GPU on this host ({gpus.note}): every class runs on the CPU")
    for rt in runtimes.values():
        if rt.error:
            problems.append(f"{rt.name}: {rt.error}")
    host = f"{socket.gethostname()} ({os.cpu_count()} cores)"
    return DoctorReport(host, gpus, runtimes, classes, problems, notes)
