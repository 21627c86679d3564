"""Tool calls for the io class: HTTP (allowlist of scheme, host, port and path; the fleet's own
services refused; redirects checked hop by hop; a whole-attempt deadline and a streamed byte
cap; retries). Read-only SQL is in :mod:`workers.ops.db`."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import httpx

from fleet.sdk import current_step, op, settings, time_left
from workers.ops import httpclient
from workers.ops.httpclient import DeadlineExceeded

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_BODY = 1 << 20  # 1 MiB: a tool answer, not a download


class ToolError(RuntimeError):
    """A tool call failed in a way a retry will not fix (or retries ran out)."""


METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""}
MAX_REDIRECTS = 5
ANY_PORT = -1


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Target:
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"url {url!r}: only http and https are allowed")
        try:
            port = parsed.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise ValueError(f"url {url!r}: bad port") from None
        # A server resolves "/v1/../admin" (and its %2e%2e spelling) to "/admin": a path with
        # dot segments would pass an allowlist prefix it leaves, so none is sent.
        segments = unquote(parsed.path).replace("\\", "/").split("/")
        if any(s in (".", "..") for s in segments):
            raise PermissionError(f"url {url!r}: a path with '.' or '..' segments is not sent")
        return cls(scheme, (parsed.hostname or "").lower(), port, parsed.path or "/")


@dataclass(frozen=True)
class Rule:
    """One allowlist entry: ``host``, ``host:port`` or ``scheme://host[:port][/path]``."""

    schemes: tuple[str, ...]
    host: str
    port: int | None  # None: the scheme's default port
    path: str

    @classmethod
    def parse(cls, entry: str) -> Rule:
        text = entry.strip()
        parsed = urlparse(text if "://" in text else f"any://{text}")
        schemes = ("http", "https") if parsed.scheme == "any" else (parsed.scheme.lower(),)
        if parsed.netloc.endswith(":*"):  # any port of this host (the fleet's own stay refused)
            host = parsed.netloc.removesuffix(":*").removeprefix("[").removesuffix("]")
            return cls(schemes, host.lower(), ANY_PORT, parsed.path or "/")
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"http_allow entry {entry!r}: bad port") from None
        return cls(schemes, (parsed.hostname or "").lower(), port, parsed.path or "/")

    def allows(self, t: Target) -> bool:
        port = self.port if self.port is not None else DEFAULT_PORTS.get(t.scheme)
        return (
            t.scheme in self.schemes
            and t.host == self.host
            and port in (t.port, ANY_PORT)
            and t.path.startswith(self.path)
        )


def _canonical(address: str) -> str:
    """One spelling per place an address reaches: an IPv4-mapped IPv6 address
    (``::ffff:127.0.0.1``, ``::ffff:7f00:1``) is its IPv4 address, and every loopback or
    unspecified address (127.0.0.0/8, ``::1``, ``0.0.0.0``, ``::``; ``localhost``) is this
    host's own."""
    if address.lower() in LOOPBACK:
        return "this host"
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address.strip("[]").split("%")[0]
        )
    except ValueError:
        return address.lower()  # a name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "this host" if ip.is_loopback or ip.is_unspecified else str(ip)


def _addresses(host: str, port: int) -> set[str]:
    """``host`` as written and every address it resolves to, each :func:`_canonical`."""
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(host, port)}
    except OSError:
        found = set()
    return {_canonical(a) for a in found | {host}}


SERVICE_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672, "amqps": 5671}


def _fleet_services() -> list[tuple[str, int, str]]:
    """(host, port, name) of the fleet's own services: never reachable from a workflow."""
    cfg = settings()
    found = []
    for url, name in ((cfg.broker_url, "the broker"), (cfg.backend_url, "the result backend")):
        parsed = urlparse(url)
        if parsed.scheme in SERVICE_PORTS:  # a URL without a port: the scheme's own
            port = parsed.port or SERVICE_PORTS[parsed.scheme]
            found.append(((parsed.hostname or "").lower(), port, name))
    found.append(("127.0.0.1", cfg.flower_port, "Flower"))
    found.append(("127.0.0.1", cfg.metrics_port, "the metrics endpoint"))
    return found


def _service_at(host: str, port: int) -> str | None:
    """Which of the fleet's own services ``host:port`` reaches (by any address it resolves
    to, in any spelling), if any. Judged for the URL, and again for the very address each
    connection is made to (:func:`httpclient.guard`): a name's second answer is not trusted."""
    mine: set[str] | None = None
    for service, service_port, name in _fleet_services():
        if port != service_port:
            continue
        mine = _addresses(host, port) if mine is None else mine
        if mine & _addresses(service, service_port):
            return name
    return None


httpclient.guard(_service_at)


def check_url(url: str, method: str = "GET") -> Target:
    """Refuse what a workflow must not reach: other schemes, hosts, ports or paths than the
    allowlist names, non-HTTP methods, and the fleet's own services whatever the list says."""
    verb = method.upper()
    if verb not in METHODS:
        raise PermissionError(f"method {method!r} is not an HTTP method ({', '.join(METHODS)})")
    target = Target.of(url)
    if name := _service_at(target.host, target.port):
        raise PermissionError(f"url {url!r} points at {name}: tools may not call it")
    allow = settings().http_allow
    if not any(Rule.parse(entry).allows(target) for entry in allow):
        raise PermissionError(
            f"{target.scheme}://{target.host}:{target.port}{target.path} is not in the "
            f"allowlist {allow} (FLEET_HTTP_ALLOW or http_allow in the fleet config)"
        )
    return target


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    url: str
    method: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            snippet = self.body[:120].decode(errors="replace").replace("\n", " ")
            raise ToolError(
                f"{self.method} {self.url} answered {self.status} with non-JSON content: "
                f"{snippet!r}"
            ) from None


def _json_or_none(reply: Reply) -> Any:
    """The JSON body; an accepted error status may come with a body that is not JSON."""
    if reply.status < 400:
        return reply.json()
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def _exchange(
    url: str, method: str, params: Any, json_body: Any, headers: Any, timeout: float
) -> Reply:
    """One attempt on the process's shared client, all of it within ``timeout`` (see
    :mod:`workers.ops.httpclient`): redirects followed by hand (each hop checked), the body
    streamed and capped at MAX_BODY bytes."""
    clients = httpclient.shared()
    end = time.monotonic() + timeout
    with httpclient.deadline(timeout):
        for _ in range(MAX_REDIRECTS + 1):
            request = {"params": params, "json": json_body, "headers": headers}
            target = Target.of(url)
            key = (target.scheme, target.host, target.port)
            with (
                clients.client(key, settings().http_per_host, end - time.monotonic()) as client,
                client.stream(method, url, timeout=timeout, **request) as response,
            ):
                if response.is_redirect:
                    url = urljoin(str(response.url), response.headers.get("location", ""))
                    after = check_url(url, method)
                    if (after.scheme, after.host, after.port) != key:
                        # credentials are for the origin they were given for, as browsers do
                        headers = _without_credentials(headers)
                    if response.status_code == 303 or (
                        response.status_code in (301, 302) and method not in ("GET", "HEAD")
                    ):
                        method, json_body = "GET", None
                    params = None  # the new location carries its own query
                    continue
                body = read_capped(response, MAX_BODY, f"{method} {url}")
                return Reply(response.status_code, body, url, method)
    raise ToolError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")


def read_capped(response: httpx.Response, cap: int, what: str) -> bytes:
    """A streamed response's body, failing as soon as it grows past ``cap`` bytes."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > cap:
            raise ToolError(f"{what}: response body over {cap} bytes")
    return bytes(body)


CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _attempt_limit(timeout: float) -> float:
    """One attempt's deadline: ``timeout``, cut to what is left of the step's; none left
    (the step -- perhaps its run -- is over: this thread was abandoned) ends the retries."""
    limit = time_left(timeout)
    if limit <= 0:
        raise DeadlineExceeded("the step's deadline has passed: no further attempt")
    return limit


def _with_idempotency_key(method: str, headers: Any) -> Any:
    """A call that may change something carries the step's idempotency key (the same for its
    retries and redeliveries: run id and node path), unless the workflow set one itself."""
    step = current_step()
    if step is None or method in SAFE_METHODS:
        return headers
    given = dict(headers or {})
    if not any(str(k).lower() == IDEMPOTENCY_HEADER.lower() for k in given):
        given[IDEMPOTENCY_HEADER] = step.idempotency_key
    return given


def _without_credentials(headers: Any) -> dict[str, Any] | None:
    if not headers:
        return headers  # type: ignore[no-any-return]
    return {k: v for k, v in dict(headers).items() if str(k).lower() not in CREDENTIALS}


@op(
    "http.request",
    kind="tool",
    classes=("io", "cpu"),
    outputs=("status", "json", "text", "attempts"),
    keeps_deadline=True,  # every attempt and backoff is cut to the step's time left
)
def http_request(
    url: str,
    method: str = "GET",
    params: dict[str, Any] | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    retries: int = 2,
    backoff: float = 0.2,
    expect_json: bool = True,
    accept: list[int] | None = None,
) -> dict[str, Any]:
    """Call an allowed HTTP API; retry timeouts and 429/5xx with backoff.

    A 4xx/5xx answer fails the step unless ``accept`` lists it (e.g. ``[404]``: "no such
    order" is an answer the workflow handles, not an error); the ``status`` output tells.

    ``timeout`` is the whole deadline of one attempt (connect, redirects, body), not per read.
    """
    method = method.upper()
    check_url(url, method)
    headers = _with_idempotency_key(method, headers)
    if not 0 < timeout <= 60:
        raise ValueError(f"timeout must be within (0, 60] seconds, got {timeout}")
    last = ""
    for attempt in range(1, retries + 2):
        limit = _attempt_limit(timeout)  # no attempt starts, or runs on, past the step
        try:
            # The whole attempt has a deadline (httpx's timeouts are per read: a server that
            # drips a byte at a time would hold the call forever), kept without a thread.
            reply = _exchange(url, method, params, json_body, headers, limit)
        except DeadlineExceeded as exc:  # a drip, a hung connect, no slot for the host
            last = f"DeadlineExceeded: {exc} ({limit:g} s)"
        except httpx.TransportError as exc:  # timeouts, refused
            last = f"{type(exc).__name__}: {exc or 'no answer'}"
        else:
            if reply.status not in RETRY_STATUS:
                if reply.status >= 400 and reply.status not in (accept or ()):
                    raise ToolError(f"{reply.method} {reply.url} answered {reply.status}")
                return {
                    "status": reply.status,
                    "json": _json_or_none(reply) if expect_json else None,
                    "text": reply.body.decode(errors="replace"),
                    "attempts": attempt,
                }
            last = f"status {reply.status}"
        if attempt <= retries:
            time.sleep(max(0.0, time_left(backoff * 2 ** (attempt - 1))))
    raise ToolError(f"{method} {url} failed after {retries + 1} attempt(s): {last}")
