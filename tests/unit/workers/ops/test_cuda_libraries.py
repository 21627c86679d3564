"""CTranslate2 on a GPU needs cuBLAS 12, which it opens by name: where the fleet finds it (the
loader path, or pip's nvidia-cublas-cu12, which the wheel's RPATH never looks at), the clear
error when a host lacks it, what `fleet doctor` reports, and that a runtime failure during a
transcription is not relabelled as undecodable audio."""

from __future__ import annotations

import ctypes.util
import shutil
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.diagnostics.doctor import RuntimeReport, _class_report
from fleet.sdk.devices import Gpu, GpuReport
from fleet.sdk.registry import registry
from workers.ops import models, speech


def _fake_pip_cublas(root: Path) -> Path:
    """A pip-like nvidia/cublas/lib holding a real shared library under cuBLAS's name."""
    lib = root / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    real = ctypes.util.find_library("m")
    assert real is not None
    found = next(
        p
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64")
        if (p := Path(d) / real).exists()
    )
    shutil.copy(found, lib / models.CUBLAS)
    return lib


def test_a_host_without_cublas_gets_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "CUBLAS", "libfleet-absent.so.12")  # on no loader path
    monkeypatch.setattr(models, "_pip_nvidia_libs", lambda: [])
    assert models.locate_cublas() is None
    with pytest.raises(RuntimeError, match=r"absent\.so\.12 is missing.*pip install nvidia-cublas"):
        models.load_cublas()


def test_pips_cublas_is_found_and_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lib = _fake_pip_cublas(tmp_path)
    monkeypatch.setattr(models, "_pip_nvidia_libs", lambda: [lib])
    assert models.locate_cublas() == str(lib / models.CUBLAS)
    models.load_cublas()  # opened by its full path: the name now resolves in this process


def test_the_doctor_names_a_missing_cublas_on_a_gpu_host(cfg: FleetConfig) -> None:
    registry.load(cfg.op_modules, cfg.op_plugins)
    gpus = GpuReport("580.1", [Gpu(0, "NVIDIA H200", 143000, 140000)])
    runtimes = {
        "ctranslate2": RuntimeReport(
            "ctranslate2", True, "4.8.5", gpu=False, devices=1, needs="libcublas.so.12 is missing"
        ),
        "llama.cpp": RuntimeReport("llama.cpp", True, "0.3.36", gpu=True, devices=1),
    }
    report = _class_report(cfg.classes["gpu"], cfg, registry, gpus, runtimes)
    assert report.binds_to == "cuda:0"
    (problem,) = report.problems
    assert "ctranslate2 cannot use the GPU here (libcublas.so.12 is missing)" in problem
    assert "pip install nvidia-cublas-cu12" in problem
    assert any(
        "a process per runtime on this host" in n and "gpu.ctranslate2" in n for n in report.notes
    )


def test_the_ctranslate2_probe_sees_no_gpu_here() -> None:
    found = models._probe_ctranslate2()
    assert found["gpu"] is False and found["devices"] == 0 and "needs" not in found


def test_only_a_bad_file_reads_as_undecodable_audio() -> None:
    import av

    assert speech._decoding(av.error.InvalidDataError(1094995529, "Invalid data"))
    assert speech._decoding(ValueError("empty")) and speech._decoding(EOFError())
    assert not speech._decoding(RuntimeError("Library libcublas.so.12 is not found"))
    assert not speech._decoding(MemoryError("CUDA out of memory"))
