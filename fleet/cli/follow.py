"""``fleet submit --follow``: a run's events printed as they happen."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fleet.cli.common import console

if TYPE_CHECKING:
    from fleet.client.client import RunHandle


def print_events(handle: RunHandle, timeout: float) -> None:
    """One line per step as it starts and ends (seconds since this began following), the
    text LLM steps stream as it comes, until the run ends or ``timeout`` passes."""
    start = time.time()
    writing: str | None = None  # the node whose text is being printed
    for event in handle.events(timeout=timeout):
        kind = event.get("event")
        if kind == "text":
            if writing != event["node"]:
                console.print(f"\n{event['node']}> ", end="", markup=False, highlight=False)
                writing = event["node"]
            console.print(event["text"], end="", markup=False, highlight=False, soft_wrap=True)
            continue
        if writing is not None:
            console.print()
            writing = None
        line = _line(event, start)
        if line:
            console.print(line, markup=False, highlight=False)


def _line(event: dict[str, Any], start: float) -> str | None:
    at = float(event.get("ended_at") or event.get("at") or time.time())
    when = f"{max(0.0, at - start):8.3f}s"
    kind = event.get("event")
    if kind == "started":
        host = str(event.get("worker") or "-").rpartition("@")[2]
        return f"{when}  started    {event['node']}  on {host}"
    if kind == "end":
        return f"{when}  run {event.get('status')}"
    if kind != "step":
        return None
    status = str(event.get("status"))
    node = event.get("node")
    if status == "waiting":
        what = f"signal '{event['signal']}'" if event.get("signal") else "its time"
        return f"{when}  waiting    {node}  for {what}"
    extra = f"  ({event.get('class') or '-'}, {float(event.get('run_s') or 0):.3f} s)"
    if event.get("error"):
        extra += f"  {event['error']}"
    return f"{when}  {status:<10} {node}{extra if status != 'skipped' else ''}"
