"""Model caching: one load per process, whatever the call looks like."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.sdk.registry import registry
from workers.ops import llm_models, models


def test_llm_is_loaded_once_per_process_however_called(tiny_gguf: str) -> None:
    before = models.LOADS[f"llm:{tiny_gguf}"]  # n_ctx 320: a size no other test loads
    first = llm_models.llm(tiny_gguf, 320)
    assert llm_models.llm(model=tiny_gguf, n_ctx=320) is first
    assert llm_models.llm(tiny_gguf, n_ctx=320) is first
    assert models.LOADS[f"llm:{tiny_gguf}"] == before + 1


def test_unknown_models_are_named() -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown LLM 'gpt-9'"):
        models.gguf_path("gpt-9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.gguf_path("/nope/model.gguf")
    with pytest.raises(FleetError, match="no preloader named 'vision'"):
        registry.preload(["vision"])


def test_model_loaders_register_their_preloaders() -> None:
    assert {"llm", "embed", "stt"} <= set(registry.preloaders())


def test_weights_load_without_extra_buffer_types_on_an_amx_cpu() -> None:
    """On a CPU with AMX, llama.cpp's AMX weight buffers crash Gemma 3's first decode: the
    loader turns extra buffer types off while Llama() reads its defaults, and only then."""
    import llama_cpp.llama_cpp as lib

    assert lib.llama_model_default_params().use_extra_bufts  # llama.cpp's own default
    with llm_models._plain_weight_buffers(True):
        assert not lib.llama_model_default_params().use_extra_bufts
    assert lib.llama_model_default_params().use_extra_bufts  # restored
    with llm_models._plain_weight_buffers(False):
        assert lib.llama_model_default_params().use_extra_bufts
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((ln for ln in lines if ln.startswith("flags")), "")
    assert llm_models._has_amx() == (" amx_tile" in flags)


def test_a_cpu_build_on_a_gpu_class_is_said_not_hidden(
    tiny_gguf: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gpu-class process with a GPU present but a CPU build of llama.cpp: once loud in the
    log, and every LLM step's trace says where it computed."""
    from fleet.sdk import process

    monkeypatch.setattr(llm_models, "wants_cuda", lambda: True)
    monkeypatch.setattr(process, "_ON_CPU", {})
    with caplog.at_level("WARNING", logger="fleet.process"):
        llm_models.llm(tiny_gguf, 336)  # a size no other test loads: a fresh load
    assert llm_models._llama_offloads() is False  # this machine's build
    why = process.cpu_fallback("llama.cpp")
    assert why is not None and "CPU build" in why and "setup-gpu.sh" in why
    assert "llama.cpp runs on the CPU, not the GPU" in caplog.text
    assert process.cpu_fallback("ctranslate2") is None


def test_the_speech_model_is_the_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLEET_STT_MODEL: the packaged base, or a CTranslate2 Whisper model directory."""
    monkeypatch.delenv(models.STT_MODEL_ENV, raising=False)
    assert models.configured_stt() == "whisper-base"
    monkeypatch.setenv(models.STT_MODEL_ENV, str(tmp_path))
    assert models.configured_stt() == str(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"not a CTranslate2 Whisper model directory: no model\.bin, config\.json, tok",
    ):
        models.stt_dir(str(tmp_path))
    with pytest.raises(
        ValueError, match=f"unknown speech-to-text model 'small'.*{models.STT_MODEL_ENV}"
    ):
        models.stt_dir("small")
    with pytest.raises(ValueError, match="unknown speech-to-text model"):
        models.stt_dir(str(tmp_path / "absent"))
    for name in models.STT_FILES:
        (tmp_path / name).write_bytes(b"")
    assert models.stt_dir(str(tmp_path)) == tmp_path
