"""Redis result backend that tracks only the results someone actually waits on.

Celery's Redis backend subscribes (pub/sub) to every task a client sends, and every
``GroupResult`` built while sending a group registers its members as pending results that are
released only when they are fulfilled through that subscription. The fleet sends groups from
long-lived workers (each ``fleet.step`` sends its successors) and waits on its own run record
(:mod:`fleet.store.runs`),
never on these results, so the stock behaviour grows memory and pub/sub channels per workflow
and complains at interpreter exit. Here, tracking starts only when a result is waited on
(``AsyncResult.get`` / ``ResultSet.join_native``); chords and stored results are unaffected.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

NAME = "fleet.messaging.backend:FleetRedisBackend"


class FleetRedisBackend(RedisBackend):  # type: ignore[misc]
    # Celery keeps a backend per thread, so an io worker builds one in each of its thousand
    # threads; the stock one reads redis-py's version from the package metadata on disk
    # each time (about 5% of a busy io worker's time). Read once per process instead.
    _driver: dict[str, Any] | None = None

    def _add_driver_info(self) -> None:
        known = FleetRedisBackend._driver
        if known is None:
            super()._add_driver_info()
            names = ("driver_info", "lib_name", "lib_version")
            known = {k: self.connparams[k] for k in names if k in self.connparams}
            FleetRedisBackend._driver = known
        self.connparams.update(known)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None  # no subscription at send time

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result  # promise bookkeeping (result.then, barriers): not a waiter

    def _track(self, result: Any, start_drainer: bool = True) -> Any:
        if not hasattr(result, "_cache"):  # a nested GroupResult: what Celery waits on is
            for node in result.results:  # its members (stock iter_native yields its children)
                self._track(node, start_drainer=False)
            return result
        super().add_pending_result(result, weak=False, start_drainer=start_drainer)
        # Subscribed late (not at send time): a result stored before now sent its pub/sub
        # message to nobody, so read it once.
        meta = self.get_task_meta(result.id)
        if meta.get("status") in states.READY_STATES:
            self.result_consumer.on_state_change(meta, None)
        return result

    def wait_for_pending(self, result: Any, **kwargs: Any) -> Any:
        self._track(result)
        return super().wait_for_pending(result, **kwargs)

    def iter_native(self, result: Any, no_ack: bool = True, **kwargs: Any) -> Any:
        self.result_consumer.drainer.start()
        for node in result.results:
            self._track(node, start_drainer=False)
        return super().iter_native(result, no_ack=no_ack, **kwargs)

    def add_pending_results(self, results: Any, weak: bool = False) -> list[Any]:
        self.result_consumer.drainer.start()
        return [self._track(r, start_drainer=False) for r in results]

    def remove_pending_result(self, result: Any) -> Any:
        if any(result.id in pending for pending in self._pending_results):
            return super().remove_pending_result(result)
        return result  # never tracked: nothing to unsubscribe


def backend_setting(url: str) -> str:
    """The ``result_backend`` value for ``url`` (only Redis URLs get the fleet backend)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return f"{NAME}+{url}"
    return url
