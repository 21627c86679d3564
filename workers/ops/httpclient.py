"""One HTTP client per worker process, shared by every step the process runs.

Building an ``httpx.Client`` costs about 20 ms of CPU with the GIL held (an SSL context, the CA
bundle read): made per call it capped an io worker at about 50 calls a second, whatever its
pool. Here the process's calls share one TLS context and keep-alive connections, in pools kept
small (:class:`Clients`), with a limit of calls in flight per host (``http_per_host``, over
the whole process); a forked child makes its own (it must not share its parent's sockets).

A call's deadline is the whole of an attempt -- connect, TLS, request, headers, body,
redirects -- not per read: a server that drips a byte at a time cannot hold a call past it.
It is kept without a thread per call: every socket operation of the call is given what is
left of the deadline as its timeout (the client's network backend reads the deadline the
calling thread or greenlet set with :func:`deadline`), and one past it raises
:class:`DeadlineExceeded`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx
from httpx._utils import get_environment_proxies  # httpx is pinned: its env rules

from workers.ops.httppool import Pool

_DEADLINE: ContextVar[float | None] = ContextVar("fleet_http_deadline", default=None)
KEEPALIVE_S = 30.0  # an idle keep-alive connection is closed after this
KEEPALIVE_MAX = 256  # idle connections kept open per pool
SHARD_SIZE = 32  # calls in flight per connection pool before another pool is opened


class DeadlineExceeded(TimeoutError):
    """An attempt ran past its whole deadline (a slow-drip server, a hung connect)."""


def _left(timeout: float | None) -> float | None:
    """A socket operation's timeout: ``timeout`` cut to what is left of the call's deadline."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("no complete answer within the attempt's deadline")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every read and write meets the current call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _left(timeout))
        except httpcore.ReadTimeout:
            _left(None)  # past the deadline: say so, not "read timeout"
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


Guard = Callable[[str, int], "str | None"]  # (address, port) -> what it is, if refused
_guards: list[Guard] = []


class Refused(PermissionError):
    """Every address a host resolved to is one a tool may not reach (a fleet service)."""


def guard(check: Guard) -> None:
    """Judge every address before a connection is made to it: ``check`` names what may not
    be reached there (e.g. the broker), or returns None."""
    if check not in _guards:
        _guards.append(check)


def _addresses(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, once per connection."""
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"{host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class _Backend(httpcore.NetworkBackend):
    """httpcore's blocking backend (cooperative under gevent), with the deadline kept and
    the address judged: the host is resolved once, here, each address is judged by the
    guards, and the connection is made to the address judged -- never to a second answer
    of the resolver (a name that resolved to a public address when the URL was checked
    and to the broker when it connects: DNS rebinding)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        refused, failed = [], None
        for address in _addresses(host, port):
            why = next((w for check in _guards if (w := check(address, port))), None)
            if why:
                refused.append(f"{address} ({why})")
                continue
            try:  # TLS still checks, and names, the host (SNI is the URL's host)
                stream = self._inner.connect_tcp(
                    address, port, _left(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc  # the next address, as socket.create_connection does
                continue
            return _Stream(stream)
        if failed is not None:
            raise failed
        if refused:
            raise Refused(f"{host}:{port} resolves to {', '.join(refused)}: tools may not call it")
        raise httpcore.ConnectError(f"{host}: no address")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every socket operation of the calls made inside ends within ``seconds`` from now."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _make_client(ssl_context: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=ssl_context)
    # httpx takes no network backend: its pool is replaced by the same pool with ours (the
    # shared TLS context kept; httpcore is pinned with httpx).
    transport._pool = Pool(  # httpcore's, its bookkeeping linear (workers.ops.httppool)
        ssl_context=ssl_context,
        max_connections=None,  # calls in flight are bounded per host (``held``), not here
        max_keepalive_connections=KEEPALIVE_MAX,
        keepalive_expiry=KEEPALIVE_S,
        network_backend=_Backend(),
    )
    # HTTP(S)_PROXY / ALL_PROXY / NO_PROXY are honoured as httpx does by default (it ignores
    # them once a transport is given): a proxied call goes through httpx's own proxy
    # transport, where the attempt's deadline is kept per read, not whole.
    mounts: dict[str, httpx.BaseTransport | None] = {
        pattern: httpx.HTTPTransport(proxy=url, verify=ssl_context) if url else None
        for pattern, url in get_environment_proxies().items()
    }
    return httpx.Client(transport=transport, mounts=mounts, follow_redirects=False, trust_env=True)


class Clients:
    """This process's HTTP clients: one TLS context, and connection pools of at most about
    ``SHARD_SIZE`` calls each, a call going to the least busy. A pool looks at every
    connection it holds on each request and each response (httpcore's own did so
    quadratically: one pool of 500+ connections spent a whole core at about 70 calls a
    second; :mod:`workers.ops.httppool` is linear), and each takes a lock per request, so
    a thousand waits are held in pools small enough for both to stay cheap. Calls in flight
    are also bounded per host (scheme, host, port)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ssl = httpx.create_ssl_context()  # the CA bundle read once per process
        self._shards: list[list[Any]] = []  # [client, calls in flight]
        self._slots: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}

    @contextmanager
    def client(
        self, host: tuple[str, str, int], limit: int, wait_s: float
    ) -> Iterator[httpx.Client]:
        """A client for one call to ``host``, once fewer than ``limit`` calls to it are in
        flight in this process (waiting at most ``wait_s``)."""
        with self._lock:
            slot = self._slots.setdefault(host, threading.BoundedSemaphore(limit))
        if not slot.acquire(timeout=max(0.0, wait_s)):
            raise DeadlineExceeded(
                f"{limit} calls to {host[1]}:{host[2]} already in flight in this process "
                "(http_per_host) for the whole of the attempt's deadline"
            )
        try:
            with self._lock:
                shard = min(self._shards, key=lambda s: int(s[1]), default=None)
                if shard is None or shard[1] >= SHARD_SIZE:
                    shard = [_make_client(self._ssl), 0]
                    self._shards.append(shard)
                shard[1] += 1
            try:
                yield shard[0]
            finally:
                with self._lock:
                    shard[1] -= 1
        finally:
            slot.release()

    def __len__(self) -> int:
        return len(self._shards)


_lock = threading.Lock()
_shared: tuple[int, Clients] | None = None


def _after_fork() -> None:  # a child makes its own clients, and its lock may not be held
    global _lock, _shared
    _lock, _shared = threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork)


def shared() -> Clients:
    """This process's clients, made on first use."""
    global _shared
    found = _shared
    if found is None or found[0] != os.getpid():
        with _lock:
            found = _shared
            if found is None or found[0] != os.getpid():
                found = _shared = (os.getpid(), Clients())
    return found[1]
