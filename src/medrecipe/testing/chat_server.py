"""A small local OpenAI-compatible chat-completions server for tests and benchmarks.

It speaks plain HTTP/1.1 with keep-alive over asyncio streams, answers
`POST .../chat/completions` (honouring `n`), and can be scripted: a fixed latency, a
responder function, a separate reasoning field, and injected faults (429 with
`retry-after`, 5xx, hangs that trip client timeouts, malformed JSON, empty bodies,
dropped connections). It counts requests and, optionally, records every body received.

    with ChatServer(latency=0.05) as srv:
        base_url = srv.base_url          # http://127.0.0.1:<port>/v1
        srv.inject("429", times=2, retry_after=0.1)
        ...
        srv.count                        # chat-completion requests received

Run standalone (used by benchmarks/engine.py): `python -m medrecipe.testing.chat_server
--port 0 --latency 0.5` prints `PORT <n>` once listening; `GET /stats` returns the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Responder = Callable[[dict[str, Any], int], "str | dict[str, Any]"]

FAULT_KINDS = ("429", "500", "502", "503", "timeout", "malformed", "empty", "close", "truncated",
               "400", "401")

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            411: "Length Required", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


def default_responder(body: dict[str, Any], index: int) -> str:
    """Deterministic answer: a short reasoning block and the letter A."""
    return f"<think>Looking at the options carefully (choice {index}).</think><answer>A</answer>"


@dataclass
class Fault:
    """One scripted failure, applied to the next matching request."""

    kind: str
    times: int = 1
    retry_after: float | None = None
    match: Callable[[dict[str, Any]], bool] | None = None
    message: str | None = None  # error text; "{authorization}" echoes that request header


@dataclass
class Received:
    """What the server saw for one chat-completion request."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float
    answered: str = ""  # "ok" or the fault kind


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _prompt_tokens(messages: Any) -> int:
    total = 0
    for m in messages or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            total += _count_tokens(c)
        elif isinstance(c, list):
            for part in c:
                if part.get("type") == "text":
                    total += _count_tokens(part.get("text", ""))
                else:
                    total += 64  # a flat charge per image part
    return max(total, 1)


@dataclass
class ChatServer:
    """Local chat-completions server running on its own event loop in a background thread."""

    latency: float = 0.0
    responder: Responder = default_responder
    reasoning_field: str | None = None  # "reasoning_content" or "reasoning": split <think> out
    max_n: int | None = None  # larger n -> HTTP 400 (an endpoint without native n)
    choices_cap: int | None = None  # return at most this many choices, whatever n asks
    chunked: bool = False  # send bodies with Transfer-Encoding: chunked
    ssl_context: ssl.SSLContext | None = None  # serve HTTPS with this server context
    record: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    hang_s: float = 30.0  # how long a "timeout" fault keeps the client waiting
    # Random faults: {kind: probability} drawn per request after scripted faults (a storm).
    chaos: dict[str, float] = field(default_factory=dict)
    chaos_seed: int = 0
    chaos_retry_after: float = 0.05
    count: int = 0  # chat-completion requests received (faulted ones included)
    connections: int = 0  # TCP connections accepted
    in_flight: int = 0
    max_in_flight_seen: int = 0
    received: list[Received] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _rng: Any = None

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/v1"

    def inject(self, kind: str, times: int = 1, retry_after: float | None = None,
               match: Callable[[dict[str, Any]], bool] | None = None,
               message: str | None = None) -> None:
        """Make the next `times` matching requests fail with `kind` (see FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULT_KINDS}")
        with self._lock:
            self._faults.append(Fault(kind, times, retry_after, match, message))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def bodies(self) -> list[dict[str, Any]]:
        """Bodies of every chat-completion request received (recording must be on)."""
        return [r.body for r in self.received if r.body is not None]

    def reset_counts(self) -> None:
        with self._lock:
            self.count = 0
            self.max_in_flight_seen = 0
            self.received.clear()

    def start(self) -> ChatServer:
        """Start listening in a background thread; returns self once the port is bound."""
        ready = threading.Event()

        def _main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, backlog=4096,
                                     ssl=self.ssl_context))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=_main, name="chat-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop the server and close open connections."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def _shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.close()
            for t in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                t.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None
        self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving
    def _next_fault(self, body: dict[str, Any] | None) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.match is None or (body is not None and f.match(body)):
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
            if self.chaos:
                if self._rng is None:
                    import random

                    self._rng = random.Random(self.chaos_seed)
                x = self._rng.random()
                for kind, p in self.chaos.items():
                    if x < p:
                        return Fault(kind, retry_after=self.chaos_retry_after
                                     if kind == "429" else None)
                    x -= p
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, path, _ = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    raw = await self._read_chunked(reader)
                else:
                    raw = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                keep = await self._dispatch(method, path, headers, raw, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)

    def _write(self, writer: asyncio.StreamWriter, status: int, payload: bytes,
               extra: dict[str, str] | None = None, ctype: str = "application/json") -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                f"Content-Type: {ctype}", "Connection: keep-alive"]
        if self.chunked and payload:
            head.append("Transfer-Encoding: chunked")
            mid = len(payload) // 2
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (payload[:mid], payload[mid:])
                            if c) + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(payload)}")
            body = payload
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                        writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path.rstrip("/").endswith("/stats"):  # for benchmarks
            with self._lock:
                stats = {"count": self.count, "max_in_flight_seen": self.max_in_flight_seen,
                         "connections": self.connections}
            self._write(writer, 200, json.dumps(stats).encode())
            await writer.drain()
            return True
        if method == "GET" and path.rstrip("/").endswith("/models"):
            self._write(writer, 200, json.dumps({"object": "list", "data": []}).encode())
            await writer.drain()
            return True
        if method != "POST" or not path.split("?")[0].endswith("/chat/completions"):
            self._write(writer, 404, b'{"error": {"message": "not found"}}')
            await writer.drain()
            return True
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.count += 1
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
            rec = None
            if self.record:
                rec = Received(path, dict(headers), body, time.time())
                self.received.append(rec)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            fault = self._next_fault(body)
            if rec is not None:
                rec.answered = fault.kind if fault else "ok"
            if fault is not None:
                return await self._fail(fault, writer, headers)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                self._write(writer, 400, b'{"error": {"message": "messages is required"}}')
                await writer.drain()
                return True
            n = int(body.get("n") or 1)
            if self.choices_cap is not None:
                n = min(n, self.choices_cap)
            if self.max_n is not None and n > self.max_n:
                msg = {"error": {"message": f"n must be at most {self.max_n}"}}
                self._write(writer, 400, json.dumps(msg).encode())
                await writer.drain()
                return True
            self._write(writer, 200, json.dumps(self._answer(body, n)).encode())
            await writer.drain()
            return True
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _fail(self, fault: Fault, writer: asyncio.StreamWriter,
                    headers: dict[str, str]) -> bool:
        kind = fault.kind
        if kind == "timeout":
            await asyncio.sleep(self.hang_s)
            return False
        if kind == "close":  # read the request, then hang up without a word
            return False
        if kind == "truncated":  # promise a body, send half of it, hang up
            head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    "Content-Length: 400\r\nConnection: keep-alive\r\n\r\n")
            writer.write(head.encode("latin-1") + b'{"id": "x", "choices": [')
            await writer.drain()
            return False
        if kind == "malformed":
            self._write(writer, 200, b'{"id": "x", "choices": [{"message": ')
        elif kind == "empty":
            self._write(writer, 200, b"")
        else:
            extra = {}
            if fault.retry_after is not None:
                extra["retry-after"] = f"{fault.retry_after:g}"
            status = int(kind)
            text = (fault.message or f"scripted {status}").replace(
                "{authorization}", headers.get("authorization", ""))
            msg = {"error": {"message": text, "type": "scripted"}}
            self._write(writer, status, json.dumps(msg).encode(), extra)
        await writer.drain()
        return True

    def _answer(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        choices = []
        completion_tokens = 0
        for i in range(n):
            out = self.responder(body, i)
            if isinstance(out, dict):  # a full message dict from the responder
                message = {"role": "assistant", **out}
                finish = out.get("finish_reason", "stop")
                message.pop("finish_reason", None)
            else:
                message = {"role": "assistant", "content": out}
                finish = "stop"
                if self.reasoning_field and out.startswith("<think>") and "</think>" in out:
                    thought, _, rest = out[len("<think>"):].partition("</think>")
                    message = {"role": "assistant", "content": rest, self.reasoning_field: thought}
            text = (message.get("content") or "") + str(message.get(self.reasoning_field or "", "") or "")
            completion_tokens += _count_tokens(text)
            choices.append({"index": i, "message": message, "finish_reason": finish,
                            "logprobs": None})
        prompt_tokens = _prompt_tokens(body.get("messages"))
        return {
            "id": f"chatcmpl-{self.count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "local"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground until interrupted (prints `PORT <n>`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reasoning-field", default=None)
    args = ap.parse_args(argv)
    srv = ChatServer(latency=args.latency, reasoning_field=args.reasoning_field, record=False,
                     host=args.host, port=args.port).start()
    print(f"PORT {srv.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
