"""`fleet up`'s hint: a command to paste as it is, with no password in it."""

from __future__ import annotations

from fleet.cli.run import submit_hint
from fleet.config import load_config


def test_a_url_without_a_password_is_printed_to_paste() -> None:
    cfg = load_config(env={"FLEET_BROKER_URL": "redis://127.0.0.1:6400/0"})
    assert (
        submit_hint(cfg) == "fleet --broker redis://127.0.0.1:6400/0 submit FILE --input key=value"
    )


def test_a_url_with_a_password_is_named_by_its_variable_never_shown() -> None:
    cfg = load_config(
        env={
            "FLEET_BROKER_URL": "amqp://fleet:s3cret@127.0.0.1:5672//",
            "FLEET_RESULT_BACKEND": "redis://127.0.0.1:6379/0",
        }
    )
    hint = submit_hint(cfg)
    assert "s3cret" not in hint and "****" not in hint
    assert hint.startswith("fleet --backend redis://127.0.0.1:6379/0 submit FILE")
    assert "FLEET_BROKER_URL set as for this fleet" in hint
