"""A small order-status HTTP API backed by SQLite: the tool the voice agent calls.

    python fleet/examples/shop_api.py --port 8765 --db /tmp/shop.sqlite

GET /orders/<id> -> {"order_id", "status", "item", "carrier", "eta", ...}; 404 for an unknown
order. GET /health -> {"ok": true}. It stands in for a company's order system, which in a
real deployment lives outside this machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ORDERS = [
    (1042, "shipped", "blender", "ParcelPost", "2026-12-01", 2),
    (1043, "processing", "kettle", None, None, 0),
    (1044, "delivered", "toaster", "ParcelPost", "2026-11-20", 1),
    (1045, "shipped", "coffee machine", "QuickShip", "2026-11-29", 1),
    (1046, "cancelled", "toaster", None, None, 0),
    (1047, "processing", "blender", None, None, 0),
    (1048, "delivered", "kettle", "QuickShip", "2026-11-18", 1),
    (2051, "cancelled", "coffee machine", None, None, 0),
]


def create_db(path: Path) -> Path:
    """(Re)create the sample database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE IF EXISTS orders")
        conn.execute(
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, status TEXT, item TEXT, "
            "carrier TEXT, eta TEXT, charges INTEGER)"
        )
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", ORDERS)
    return path


def make_handler(db: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._send(200, {"ok": True})
            m = re.fullmatch(r"/orders/(\d+)", self.path)
            if not m:
                return self._send(404, {"error": f"no route {self.path}"})
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute(
                    "SELECT * FROM orders WHERE order_id = ?", (int(m[1]),)
                ).fetchone()
            if row is None:
                body = {
                    "order_id": int(m[1]),
                    "status": "unknown",
                    "error": f"order {m[1]} not found",
                }
                return self._send(404, body)
            return self._send(200, dict(row))

        def log_message(self, format: str, *args: object) -> None:  # quiet by default
            pass

    return Handler


def serve(port: int, db: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(db))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: workers elsewhere)"
    )
    parser.add_argument("--db", type=Path, default=Path(".fleet/shop.sqlite"))
    args = parser.parse_args()
    create_db(args.db)
    server = serve(args.port, args.db, args.host)
    print(f"order API on http://{args.host}:{args.port} (db {args.db})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
