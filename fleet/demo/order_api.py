"""The example order-status API (``fleet/examples/shop_api.py``) as a child process: what the
voice agent's tool calls reach in the demo, the evaluation and the benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleet.deploy.local import free_port
from fleet.deploy.signals import deferred
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
        with deferred():  # a signal now: raised once self.proc is there to stop
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_up()
        except BaseException:  # not up, or the command was stopped meanwhile
            self.stop()
            raise

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise FleetError("the example order API did not start (see logs/shop-api.log)")
            time.sleep(0.1)

    def stop(self) -> None:
        with deferred():
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
            self.log.close()
