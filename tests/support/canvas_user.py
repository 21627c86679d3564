"""A Celery user's own app, as it was before the fleet: the same broker and result backend as
the fleet (a workflow signature in its canvases needs both), its own default queue
(``celery``) and its own worker (``celery -A tests.support.canvas_user worker``). It imports
nothing of the fleet: tests/support/canvas_cases.py runs its canvases without the fleet too."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ["FLEET_BROKER_URL"]

app = Celery(
    "userapp", broker=URL, backend=URL, include=["tests.support.canvastasks"], set_as_current=False
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)
