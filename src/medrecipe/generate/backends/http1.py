"""A lean HTTP/1.1 keep-alive transport for httpx, for many concurrent JSON calls.

httpx's default transport (httpcore + h11 + anyio) spends about half a millisecond of CPU
per request and scans its whole pool on every event; at hundreds of requests per second
that CPU, not the endpoint, sets the pace. This transport plugs into `httpx.AsyncClient`
(which still builds requests, merges headers and decodes gzip) and does only what a
chat-completions call needs: HTTP/1.1 over asyncio streams, plain or TLS, a LIFO pool of
keep-alive connections per origin, Content-Length and chunked bodies, and timeouts.
Proxies configured in the environment still go through httpx's own transports (mounts).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import httpx

_MAX_HEADER = 64 * 1024
T = TypeVar("T")


async def _within(aw: Awaitable[T], seconds: float | None) -> T:
    """Await with a deadline (asyncio.timeout where available: no extra task per call)."""
    if seconds is None:
        return await aw
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken socket may fail; nothing to do
            pass


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport with a per-origin pool of at most `max_connections`."""

    def __init__(self, max_connections: int = 64, ssl_context: ssl.SSLContext | None = None):
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._all: set[_Conn] = set()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _connect(self, origin: tuple[str, str, int], timeout: float | None) -> _Conn:
        scheme, host, port = origin
        kwargs = {"ssl": self._ssl_context(), "server_hostname": host} if scheme == "https" else {}
        try:
            reader, writer = await _within(
                asyncio.open_connection(host, port, limit=_MAX_HEADER * 4, **kwargs), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {e}") from None
        conn = _Conn(reader, writer)
        self._all.add(conn)
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        head = bytearray(b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path))
        for k, v in request.headers.raw:
            head += k + b": " + v + b"\r\n"
        head += b"\r\n"
        payload = bytes(head) + body
        if self._slots.locked():
            try:
                await _within(self._slots.acquire(), timeouts.get("pool"))
            except asyncio.TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
        else:
            await self._slots.acquire()  # free slot: returns at once
        try:
            conn = self._take(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"))
            # No resend here, even when a reused keep-alive connection dies before any
            # answer: the server may have read (and billed) the request, so the engine
            # must see the attempt, count it and decide whether a retry is allowed.
            return await self._exchange(conn, origin, payload, request, timeouts.get("read"))
        finally:
            self._slots.release()

    def _take(self, origin: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            self._drop(conn)
        return None

    def _drop(self, conn: _Conn) -> None:
        self._all.discard(conn)
        conn.close()

    async def _exchange(self, conn: _Conn, origin: tuple[str, str, int], payload: bytes,
                        request: httpx.Request, timeout: float | None) -> httpx.Response:
        keep = False
        got_bytes = False
        try:
            conn.writer.write(payload)
            try:
                status, headers, content, keep, got_bytes = await _within(
                    self._read_response(conn), timeout or None)
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"no complete response within {timeout:g} s") from None
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                if not getattr(e, "partial", b""):
                    where = "a reused keep-alive" if conn.reused else "the"
                    raise httpx.RemoteProtocolError(
                        f"the server closed {where} connection without answering") from None
                raise httpx.ReadError(f"connection lost while reading the response: {e!r}") from None
            except asyncio.LimitOverrunError:
                raise httpx.RemoteProtocolError("response header too large") from None
            except ValueError as e:
                raise httpx.RemoteProtocolError(f"malformed HTTP response: {e}") from None
        finally:
            if keep:
                self._idle.setdefault(origin, deque()).append(conn)
            else:
                self._drop(conn)
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    @staticmethod
    async def _read_response(conn: _Conn) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool, bool]:
        reader = conn.reader
        while True:
            raw_head = await reader.readuntil(b"\r\n\r\n")
            lines = raw_head[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            if status != 100:  # skip interim 100 Continue responses
                break
        version = parts[0]
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        close = version == b"HTTP/1.0"
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            k, v = k.strip(), v.strip()
            lk = k.lower()
            if lk == b"content-length":
                length = int(v)
            elif lk == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif lk == b"connection":
                lv = v.lower()
                close = b"close" in lv or (version == b"HTTP/1.0" and b"keep-alive" not in lv)
            headers.append((k, v))
        if chunked:
            content = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                content += await reader.readexactly(size)
                await reader.readexactly(2)
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
            headers.append((b"Content-Length", str(len(content)).encode()))
            body = bytes(content)
        elif length is not None:
            body = await reader.readexactly(length) if length else b""
        elif status in (204, 304) or status < 200:
            body = b""
        else:  # no framing: the body runs to the end of the connection
            body = await reader.read()
            close = True
        return status, headers, body, not close, True

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
