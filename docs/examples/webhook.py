import hashlib
import hmac
import json
import os

from fleet import Fleet
from fleet.engine.waits import SignalError

SECRET = os.environ["APPROVALS_WEBHOOK_SECRET"].encode()  # shared with the approvals tool only
fleet = Fleet()  # this service holds the fleet's credentials; the caller never sees them


def approvals_webhook(body: bytes, signature: str) -> tuple[int, str]:
    """POST /hooks/approvals: {"run": ..., "approved": ..., "by": ...}, signed with HMAC-SHA256."""
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return 401, "bad signature"
    event = json.loads(body)
    decision = {"approved": bool(event["approved"]), "by": str(event["by"])[:80]}
    try:
        fleet.signal(str(event["run"]), "approval", decision)  # only this name, only this shape
    except SignalError as exc:  # unknown or finished run: nothing changed
        return 409, str(exc)
    return 202, "accepted"
