"""Redis result backend that does not subscribe to results the client never waits on.

Celery's Redis backend subscribes (pub/sub) to every task a client sends, so that
``AsyncResult.get()`` returns fast. Fleet clients wait on the run record instead
(:mod:`fleet.runs`), so the subscription is a wasted connection that also complains when
the interpreter exits. Chords and results are unaffected.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

NAME = "fleet.backend:FleetRedisBackend"


class FleetRedisBackend(RedisBackend):  # type: ignore[misc]
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def remove_pending_result(self, result: Any) -> Any:
        # Only results someone waited on were subscribed; unsubscribing the others would
        # open a pub/sub connection from AsyncResult.__del__, even at interpreter exit.
        if any(result.id in pending for pending in self._pending_results):
            return super().remove_pending_result(result)
        return result


def backend_setting(url: str) -> str:
    """The ``result_backend`` value for ``url`` (only Redis URLs get the fleet backend)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return f"{NAME}+{url}"
    return url
