from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import load_config
from fleet.errors import ConfigError


def test_defaults_have_four_classes_with_suited_presets() -> None:
    cfg = load_config(env={})
    assert list(cfg.classes) == ["gpu", "npu-lite", "cpu", "io"]
    gpu = cfg.classes["gpu"]
    assert gpu.device == "cuda" and gpu.pool == "prefork" and gpu.concurrency == 1
    assert not gpu.batches and gpu.compute_processes == 1
    batching = gpu.model_copy(update={"pool": "threads", "concurrency": 8})
    assert batching.batches and batching.compute_processes == 1  # one process, 8 sequences
    assert not cfg.classes["io"].batches and cfg.classes["io"].compute_processes == 0
    assert cfg.classes["io"].pool in ("threads", "gevent") and cfg.classes["io"].concurrency >= 8
    assert cfg.classes["cpu"].pool == "prefork"
    assert cfg.broker_url.startswith("redis://")
    assert cfg.backend_url == cfg.broker_url


def test_file_overrides_fields_and_adds_classes(tmp_path: Path) -> None:
    f = tmp_path / "fleet.toml"
    f.write_text(
        'policy = "static"\n[classes.gpu]\nconcurrency = 3\n[classes.tpu]\npool = "solo"\n'
    )
    cfg = load_config(f, env={})
    assert cfg.policy == "static"
    assert cfg.classes["gpu"].concurrency == 3
    assert cfg.classes["gpu"].device == "cuda"  # untouched fields keep the preset
    assert cfg.classes["tpu"].pool == "solo" and cfg.classes["tpu"].queue_name == "tpu"


def test_yaml_config_and_env_override(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text("broker_url: redis://file:1/0\nclasses:\n  io:\n    concurrency: 4\n")
    env = {
        "FLEET_BROKER_URL": "redis://env:2/0",
        "FLEET_CLASS_NPU_LITE_CONCURRENCY": "2",
        "FLEET_CLASS_IO_POOL": "gevent",
    }
    cfg = load_config(f, env=env)
    assert cfg.broker_url == "redis://env:2/0"
    assert cfg.classes["npu-lite"].concurrency == 2
    assert cfg.classes["io"].concurrency == 4 and cfg.classes["io"].pool == "gevent"


def test_bad_values_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        load_config(env={"FLEET_CLASS_GPU_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="FLEET_CLASS_FOO_POOL"):
        load_config(env={"FLEET_CLASS_FOO_POOL": "threads"})
    f = tmp_path / "bad.toml"
    f.write_text("[classes.gpu]\npool = 'fork'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(f, env={})
    with pytest.raises(ConfigError, match="control_class"):
        load_config(env={"FLEET_CONTROL_CLASS": "nope"})


def test_a_class_can_be_disabled(tmp_path: Path) -> None:
    f = tmp_path / "fleet.toml"
    f.write_text(
        'control_class = "cpu"\n[classes.gpu]\nenabled = false\n[classes.io]\nenabled = false\n'
    )
    cfg = load_config(f, env={})
    assert list(cfg.classes) == ["npu-lite", "cpu"]


def test_redact_hides_passwords_only() -> None:
    from fleet.config import redact

    assert redact("redis://:pw@10.0.0.5:6380/0") == "redis://:****@10.0.0.5:6380/0"
    assert redact("amqp://fleet:pw@rabbit/vhost") == "amqp://fleet:****@rabbit/vhost"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    # redis-py reads a password from the query string too (issue 41, finding 9)
    hidden = "redis://redis:6379/0?db=1&password=****"
    assert redact("redis://redis:6379/0?db=1&password=pw") == hidden


def test_native_threads_follow_what_the_class_runs() -> None:
    from fleet.config import load_config
    from fleet.deploy.launch import native_threads

    cfg = load_config(env={})
    classes = cfg.classes
    # a 64-core host: the gpu class on the CPU gets the cores (was: 64 / all compute slots)
    assert native_threads(classes["gpu"], 64, on_gpu=False) == 64
    assert native_threads(classes["gpu"], 64, on_gpu=True) == 2  # it only feeds the GPU
    assert native_threads(classes["io"], 64, on_gpu=False) == 1  # waits on I/O
    cpu = classes["cpu"].model_copy(update={"concurrency": 8})
    assert native_threads(cpu, 64, on_gpu=False) == 8  # its own slots share the cores
    pinned = classes["gpu"].model_copy(update={"threads": 3})
    assert native_threads(pinned, 64, on_gpu=False) == 3
    env = load_config(env={"FLEET_CLASS_GPU_THREADS": "5"})
    assert env.classes["gpu"].threads == 5


def test_a_run_priority_means_the_same_on_both_brokers() -> None:
    """Higher is served sooner: RabbitMQ reads message priority 9 first, kombu's Redis
    transport 0 first; a run without one is 0 (the lowest) on both."""
    redis_cfg = load_config(env={"FLEET_BROKER_URL": "redis://h:6379/0"})
    rabbit = load_config(env={"FLEET_BROKER_URL": "amqp://u:p@h:5672//"})
    assert [rabbit.message_priority(p) for p in (None, 0, 5, 9)] == [0, 0, 5, 9]
    assert [redis_cfg.message_priority(p) for p in (None, 0, 5, 9)] == [9, 9, 4, 0]
    assert redis_cfg.message_priority(42) == 0 and rabbit.message_priority(-1) == 0  # clamped


def test_a_planned_gpu_class_takes_the_runtimes_of_the_classes_it_serves(
    tmp_path: Path,
) -> None:
    """A plan's a100 class serves gpu: on a GPU host it must run gpu's lanes (llama.cpp and
    CTranslate2 apart), not one process that refuses the second runtime."""
    f = tmp_path / "plan.toml"
    f.write_text(
        '[classes.a100]\nserves = ["gpu"]\ndevice = "cuda"\n'
        '[classes.a40]\nserves = ["gpu"]\ndevice = "cuda"\nruntimes = ["llama.cpp"]\n'
        '[classes.cpu-16]\nserves = ["cpu", "npu-lite"]\n'
    )
    cfg = load_config(f, env={})
    assert cfg.classes["a100"].runtimes == ["llama.cpp", "ctranslate2"]
    assert cfg.classes["a100"].queues == ["a100", "a100.ctranslate2"]
    assert cfg.classes["a40"].runtimes == ["llama.cpp"]  # its own list wins
    assert cfg.classes["cpu-16"].runtimes is None  # not a GPU class: may load anything


def test_endpoints_are_priced_as_docs_operations_shows(tmp_path: Path) -> None:
    """The [endpoints.NAME] block of docs/operations.md, as written there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    block = text.split("```toml\n[endpoints.", 1)[1].split("```", 1)[0]
    path = tmp_path / "fleet.toml"
    path.write_text("[endpoints." + block)
    cfg = load_config(path, env={})
    found = cfg.endpoint_for("http://127.0.0.1:8080/v1/")
    assert found is not None and found[0] == "local-llm"
    assert found[1].dollars(1_000_000, 100_000) == pytest.approx(0.15 + 0.06)
    assert cfg.endpoint_for("http://127.0.0.1:9999/v1") is None
    path.write_text('[endpoints.x]\nbase_url = "http://h/v1"\nprice_in = -1\n')
    with pytest.raises(ConfigError, match="price_in"):
        load_config(path, env={})
