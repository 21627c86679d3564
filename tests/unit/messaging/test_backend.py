"""The result backend a worker thread builds (fleet/messaging/backend.py): Celery builds one
per thread, so an io worker builds a thousand; each must not read package metadata again."""

from __future__ import annotations

import importlib.metadata
import threading

import pytest

from fleet.config import load_config
from fleet.messaging.app import create_app
from fleet.messaging.backend import FleetRedisBackend


def test_a_threads_backend_reuses_the_driver_info_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(load_config())
    first = app._get_backend()
    assert isinstance(first, FleetRedisBackend)
    reads: list[str] = []
    real = importlib.metadata.version

    def counted(name: str) -> str:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    built: list[FleetRedisBackend] = []
    threads = [threading.Thread(target=lambda: built.append(app.backend)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in built}) == 8  # a backend per thread, as Celery keeps them
    assert reads == []
    assert all(b.connparams["driver_info"] is first.connparams["driver_info"] for b in built)
