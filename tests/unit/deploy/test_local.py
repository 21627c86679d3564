"""`fleet up` starts each class's workers, and no more processes than the host can hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet


def test_a_plan_larger_than_the_host_is_scaled_down_with_a_note(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    classes = dict(cfg.classes)
    classes["cpu"] = classes["cpu"].model_copy(update={"workers": 6})
    classes["io"] = classes["io"].model_copy(update={"workers": 2})
    sized = cfg.model_copy(update={"classes": classes})
    fleet = LocalFleet(sized, ["cpu", "io"], flower=False, workdir=tmp_path)
    assert fleet.fit_to_host(16) is None and fleet.counts == {}  # 8 fit: as planned
    note = fleet.fit_to_host(4)
    assert note is not None and "asks for 8 worker processes (6 cpu, 2 io)" in note
    assert fleet.counts == {"cpu": 3, "io": 1} and "runs 3 cpu, 1 io" in note
    assert fleet.fit_to_host(1) is not None and fleet.counts == {"cpu": 1, "io": 1}  # one each


def test_a_password_in_the_urls_query_is_asked_for_by_the_redis_it_starts(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    import redis

    from fleet.deploy.local import free_port

    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2"  # as redis-py reads it
    fleet = LocalFleet(cfg, ["io"], flower=False, workdir=tmp_path, say=lambda _: None)
    (tmp_path / "logs").mkdir()
    try:
        fleet._ensure_redis(url)
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url.split("?")[0]).ping()
    finally:
        fleet.stop()
