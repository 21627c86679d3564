"""The voice agent asked the demo's question: spoken on the client, sent by reference."""

from __future__ import annotations

import importlib.util
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.demo.speech import speak_to_file
from fleet.paths import EXAMPLES

QUESTION = "Hello. Where is my order 1042? It has not arrived yet."


def ask_voice_agent(client: Any, api: str, index: str, folder: Path) -> Any:
    """Speak QUESTION to a WAV in ``folder``, upload it and submit the voice agent (no
    worker reads the client's disk); the run handle."""
    question = speak_to_file(QUESTION, folder / "q.wav")
    inputs = {"audio": client.upload(question), "api": api, "index": index}
    return client.submit(EXAMPLES / "voice_agent.yaml", inputs)


@contextmanager
def order_api_server() -> Iterator[str]:
    """The example shop's order API (fleet/examples/shop_api.py) on the loopback, on a fresh
    database: its base URL."""
    spec = importlib.util.spec_from_file_location("shop_api", EXAMPLES / "shop_api.py")
    assert spec is not None and spec.loader is not None
    shop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shop)
    db = shop.create_db(Path(tempfile.mkdtemp()) / "shop.sqlite")
    server = shop.serve(0, db)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
