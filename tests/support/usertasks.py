"""A team's existing Celery tasks, as a user of the fleet would have them: plain
``shared_task`` functions that know nothing of workflows. The test fleet's workers import
this module (``task_modules`` in tests/fleet-test.toml)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="usertasks.shout")
def shout(text: str) -> str:
    return text.upper()


@shared_task(name="usertasks.ticket")
def ticket(text: str) -> dict[str, Any]:
    """A dict whose keys are a workflow's inputs: it fills them by name."""
    return {"t": text}


@shared_task(name="usertasks.stray")
def stray(text: str) -> dict[str, Any]:
    """A dict with a key that is no workflow input."""
    return {"t": text, "colour": "red"}


@shared_task(name="usertasks.wrap")
def wrap(outputs: dict[str, Any], prefix: str = "") -> str:
    return prefix + "<" + str(outputs.get("out")) + ">"


@shared_task(name="usertasks.merge")
def merge(results: list[dict[str, Any]]) -> str:
    return "+".join(str(r.get("out")) for r in results)


@shared_task(name="usertasks.words")
def words(text: str) -> dict[str, Any]:
    parts = text.split()
    return {"words": parts, "count": len(parts)}


@shared_task(name="usertasks.boom")
def boom(text: str) -> str:
    raise ValueError(f"boom on {text!r}")


@shared_task(name="usertasks.note_failure")
def note_failure(task_id: str, key: str) -> None:
    """An errback (the old, by-id form): leaves a mark where the test can see it."""
    import redis

    from fleet.config import load_config

    redis.Redis.from_url(load_config().backend_url).set(key, task_id, ex=60)


@shared_task(name="usertasks.nap", bind=True)
def nap(self: Any, text: str, seconds: float) -> str:
    """Sleep ``seconds``, noting each start -- its task id and the idempotency key of the step
    it runs for -- in the list ``usertasks:nap:<text>``, where a test counts them."""
    import json
    import time

    import redis

    from fleet.config import load_config
    from fleet.sdk import current_step

    step = current_step()
    note = {"id": self.request.id, "key": step.idempotency_key if step else None}
    client = redis.Redis.from_url(load_config().backend_url)
    client.rpush(f"usertasks:nap:{text}", json.dumps(note))
    client.expire(f"usertasks:nap:{text}", 600)
    time.sleep(seconds)
    return text
