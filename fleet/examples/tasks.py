"""A team's existing Celery tasks, as docs/workflows.md uses them: plain ``shared_task``
functions that know nothing of workflows. Fleet workers run them once the configuration
names this module (``task_modules = ["fleet.examples.tasks"]`` or
``FLEET_TASK_MODULES=fleet.examples.tasks``)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="shop.normalise_ticket")
def normalise_ticket(text: str) -> str:
    """Collapse the whitespace of a ticket."""
    return " ".join(text.split())


@shared_task(name="shop.count_words")
def count_words(text: str) -> dict[str, Any]:
    """A dict result: a workflow step may take its keys as outputs."""
    return {"words": len(text.split()), "text": text}


@shared_task(name="shop.notify")
def notify(outputs: dict[str, Any], channel: str = "support") -> str:
    """Post a workflow's answer to a channel (here: return the message)."""
    return f"[{channel}] {outputs['answer']} ({outputs['words']} words)"


@shared_task(name="shop.digest")
def digest(results: list[dict[str, Any]]) -> str:
    """Join the answers of several runs (a chord's callback)."""
    return " / ".join(str(r["answer"]) for r in results)
