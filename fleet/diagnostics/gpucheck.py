"""``fleet gpu-check``: the GPU path end to end, on any NVIDIA host (and on a CPU host too).

1. Build llama-cpp-python with CUDA for this GPU's architecture (NVML's compute capability),
   unless the installed build already offloads to the GPU or ``--skip-build``.
2. Start a local fleet of the gpu, cpu and io classes on a Redis of its own.
3. Disaggregated generation both ways -- prefill on gpu then decode on cpu, and back -- and
   check that the greedy text equals a single-class ``llm.generate`` on each class.
4. Time prefill and decode per class and print tokens/s (and write them as JSON).
5. Speech-to-text on gpu and on cpu (CTranslate2, in the gpu worker's own lane on a GPU
   host) of a sentence espeak-ng speaks: both must hear its number.

On a host without a GPU every step runs on the CPU and the report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleet.client.client import Fleet
from fleet.client.workflow import Workflow
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.errors import FleetError
from fleet.measurement.profiling import plan_measurements, profile_fleet
from fleet.messaging.app import create_app
from fleet.sdk.devices import detect_gpus

LLAMA_VERSION = "0.3.36"
PROMPT = (
    "Context: Orders placed before 2 pm on a working day leave our warehouse the same day. "
    "Standard shipping takes 3 to 5 working days.\nQuestion: How long does shipping take?\n"
    "Answer:"
)


STT_TEXT = "Hello. Where is my order 1042? It has not arrived yet."  # the demo's question
STT_NUMBER = "1042"


@dataclass
class CheckReport:
    gpus: list[str]
    llama_gpu_build: bool
    built: str  # what step 1 did
    pd: dict[str, bool] = field(default_factory=dict)  # direction -> text equal
    texts: dict[str, str] = field(default_factory=dict)
    tokens_per_s: dict[str, dict[str, float]] = field(default_factory=dict)  # cls -> phase
    profile: str | None = None  # the profile file `fleet profile` wrote for the LLM ops
    seconds: float = 0.0
    stt: dict[str, str] = field(default_factory=dict)  # cls -> transcript
    stt_note: str = ""  # why speech-to-text was not checked

    @property
    def stt_ok(self) -> bool:
        return bool(self.stt) and all(STT_NUMBER in t.replace(",", "") for t in self.stt.values())

    @property
    def ok(self) -> bool:
        heard = self.stt_ok or (not self.stt and bool(self.stt_note))
        return bool(self.pd) and all(self.pd.values()) and heard


def cuda_arch() -> str | None:
    """The first GPU's compute capability as CMake wants it (9.0 -> "90")."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(
                pynvml.nvmlDeviceGetHandleByIndex(0)
            )
            return f"{major}{minor}"
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU: nothing to build for
        return None


def llama_offloads() -> bool:
    """Whether the installed llama-cpp-python is a GPU build (asked in a fresh process)."""
    code = "import llama_cpp; print(bool(llama_cpp.llama_supports_gpu_offload()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() == "True"


def find_nvcc() -> str | None:
    """The CUDA compiler: on PATH, or in CUDA_HOME (where NVIDIA's toolkit packages put it,
    /usr/local/cuda, when unset)."""
    found = shutil.which("nvcc")
    home = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "bin" / "nvcc"
    if found is None and os.access(home, os.X_OK):
        found = str(home)
    return found


def build_llama(arch: str, say: Callable[[str], None]) -> None:
    nvcc = find_nvcc()
    if nvcc is None:
        raise FleetError(
            "no CUDA compiler (nvcc) to build llama.cpp for this GPU: install the CUDA toolkit "
            "(Debian: apt-get install nvidia-cuda-toolkit) and put its bin/ on PATH, or run "
            "with --skip-build"
        )
    args = f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={arch} -DLLAVA_BUILD=OFF"
    env = {**os.environ, "CMAKE_ARGS": args, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count())}
    env["CUDACXX"] = nvcc
    say(f"building llama-cpp-python {LLAMA_VERSION} with CUDA (arch {arch}); about 5 minutes")
    pip = [sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-cache-dir"]
    pip += ["--no-deps", f"llama-cpp-python=={LLAMA_VERSION}"]
    subprocess.run(pip, env=env, check=True)


def _pd_workflow(model: str, tokens: int) -> Workflow:
    wf = Workflow("gpu-check", inputs=["p"])
    for cls in ("gpu", "cpu"):
        whole = wf.step(
            f"whole_{cls}",
            "llm.generate",
            prompt=wf.input("p"),
            max_tokens=tokens,
            model=model,
            classes=[cls],
        )
        wf.output(f"whole_{cls}", whole["text"])
    for first, then in (("gpu", "cpu"), ("cpu", "gpu")):
        pre = wf.step(
            f"prefill_{first}",
            "llm.prefill",
            prompt=wf.input("p"),
            model=model,
            classes=[first],
        )
        dec = wf.step(
            f"decode_{then}",
            "llm.decode",
            state=pre["state"],
            max_tokens=tokens,
            model=model,
            classes=[then],
        )
        wf.output(f"{first}_to_{then}", dec["text"])
        wf.output(f"prompt_tokens_{first}", pre["prompt_tokens"])
    return wf


def _rates(trace: list[Any], tokens: int, prompt_tokens: int) -> dict[str, dict[str, float]]:
    ran = {e.node: e for e in trace if e.status == "succeeded"}
    out: dict[str, dict[str, float]] = {}
    for cls in ("gpu", "cpu"):
        rates = {"generate_tok_s": round(tokens / ran[f"whole_{cls}"].run_s, 1)}
        if f"prefill_{cls}" in ran:
            rates["prefill_tok_s"] = round(prompt_tokens / ran[f"prefill_{cls}"].run_s, 1)
        if f"decode_{cls}" in ran:
            rates["decode_tok_s"] = round(tokens / ran[f"decode_{cls}"].run_s, 1)
        out[cls] = rates
    return out


def run_check(
    cfg: FleetConfig,
    workdir: Path,
    say: Callable[[str], None],
    *,
    skip_build: bool = False,
    model: str = "gemma3-270m",
    tokens: int = 32,
    profile_out: Path | None = None,
) -> CheckReport:

    start = time.monotonic()
    gpus = detect_gpus()
    names = [f"{g.index}: {g.name}" for g in gpus.gpus]
    built = "skipped (--skip-build)" if skip_build else "not needed"
    arch = cuda_arch() if gpus.gpus else None
    if not skip_build and arch and not llama_offloads():
        build_llama(arch, say)
        built = f"built for CUDA arch {arch}"
    elif not skip_build and not gpus.gpus:
        built = f"no GPU ({gpus.note}): CPU build kept"
    report = CheckReport(names, llama_offloads(), built)
    cfg = cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    # a model the operator names by path: its folder is one the workers may read from
    roots = list(cfg.file_roots)
    if model.endswith(".gguf"):
        roots.append(str(Path(model).expanduser().resolve().parent))
    env = {"FLEET_FILE_ROOTS": ",".join(roots)} if roots else {}
    with LocalFleet(cfg, ["gpu", "cpu", "io"], False, workdir, "WARNING", say=say, env=env):
        client = Fleet(app=create_app(cfg), cfg=cfg)
        wf = _pd_workflow(model, tokens)
        say("warming up (model loads on each class)...")
        client.submit(wf, {"p": PROMPT}).get(timeout=900)
        run = client.submit(wf, {"p": PROMPT})
        out = run.get(timeout=900)
        report.texts = {k: str(v) for k, v in out.items()}
        for first, then in (("gpu", "cpu"), ("cpu", "gpu")):
            # GPU and CPU kernels may round differently: either class's own text is right.
            wholes = (out[f"whole_{first}"], out[f"whole_{then}"])
            report.pd[f"{first}->{then}"] = out[f"{first}_to_{then}"] in wholes
        prompt_tokens = int(out["prompt_tokens_gpu"])
        report.tokens_per_s = _rates(run.trace(), tokens, prompt_tokens)
        _check_stt(client, report, say)
        if profile_out is not None:
            say("profiling llm.prefill and llm.generate on gpu and cpu (fleet profile)...")
            report.profile = _profile(client, profile_out)
    report.seconds = round(time.monotonic() - start, 1)
    return report


def _stt_workflow() -> Workflow:
    wf = Workflow("gpu-check-stt", inputs=["text"])
    spoken = wf.step("speak", "speech.tts", text=wf.input("text"))
    for cls in ("gpu", "cpu"):
        heard = wf.step(f"stt_{cls}", "speech.stt", audio=spoken["audio"], classes=[cls])
        wf.output(cls, heard["text"])
    return wf


def _check_stt(client: Fleet, report: CheckReport, say: Callable[[str], None]) -> None:
    """Speech-to-text of one spoken sentence on gpu and cpu: CTranslate2's GPU path (cuBLAS
    12 included) is exercised here, not at a user's first call."""
    if shutil.which("espeak-ng") is None:
        report.stt_note = "not checked: espeak-ng is not installed (apt-get install espeak-ng)"
        say(f"speech-to-text {report.stt_note}")
        return
    say("speech-to-text on gpu and cpu...")
    out = client.submit(_stt_workflow(), {"text": STT_TEXT}).get(timeout=900)
    report.stt = {cls: str(out[cls]) for cls in ("gpu", "cpu")}


def _profile(client: Fleet, out: Path) -> str:

    pairs = plan_measurements(client, ["llm.prefill", "llm.generate"], ["gpu", "cpu"])
    store = profile_fleet(client, pairs, reps=2, tick=lambda: None)
    store.save(out)
    return str(out)


def write(report: CheckReport, path: Path) -> None:
    doc = {**asdict(report), "ok": report.ok}
    path.write_text(json.dumps(doc, indent=1))
