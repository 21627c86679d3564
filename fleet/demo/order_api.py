"""The example order-status API (``fleet/examples/shop_api.py``) as a child process: what the
voice agent's tool calls reach in the demo, the evaluation and the benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleet.deploy.local import free_port
from fleet.errors import FleetError
from fleet.paths import EXAMPLES


class OrderAPI:
    """The example order-status API (fleet/examples/shop_api.py) as a child process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(EXAMPLES / "shop_api.py"), "--port", str(self.port)]
        argv += ["--db", str(workdir / "shop.sqlite")]
        self.log = (workdir / "logs" / "shop-api.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise FleetError("the example order API did not start (see logs/shop-api.log)")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
