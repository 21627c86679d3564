"""The voice agent asked the demo's question: spoken on the client, sent by reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.examples.demo import EXAMPLES, speak_to_file

QUESTION = "Hello. Where is my order 1042? It has not arrived yet."


def ask_voice_agent(client: Any, api: str, index: str, folder: Path) -> Any:
    """Speak QUESTION to a WAV in ``folder``, upload it and submit the voice agent (no
    worker reads the client's disk); the run handle."""
    question = speak_to_file(QUESTION, folder / "q.wav")
    inputs = {"audio": client.upload(question), "api": api, "index": index}
    return client.submit(EXAMPLES / "voice_agent.yaml", inputs)
