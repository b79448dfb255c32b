"""OpenAI-compatible chat completions over httpx (OpenAI, Azure OpenAI, DeepSeek, vLLM, SGLang).

Speaks the plain protocol: `POST {base_url}/chat/completions` with a JSON body (model,
messages, n, temperature, top_p, max_tokens, seed, stream false, plus `sampling.extra`).
Image parts become base64 data URLs. A separate reasoning field (`reasoning_content`, as
DeepSeek and vLLM's reasoning parsers return, or `reasoning`) is joined in front of the
content as `<think>...</think>`.

The API key is read from the environment variable the recipe names, kept only in the
request headers, and scrubbed from every error message.

Speed: by default the httpx client runs on `Http1Transport` (http1.py), a lean keep-alive
HTTP/1.1 transport whose pool costs O(1) per call. With `http_transport: httpx` it uses
httpx's own transport instead; one httpcore pool with hundreds of connections scans the
whole pool on every event, so connections are then spread over several small clients
("shards") and each call goes to the least busy one.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import re
import ssl
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx

from medrecipe.config import TeacherConfig, is_safe_for_secrets
from medrecipe.errors import UserError
from medrecipe.generate.backends import (
    BackendError,
    ChatRequest,
    ChatResponse,
    Completion,
    join_reasoning,
)
from medrecipe.generate.backends.http1 import Http1Transport

if TYPE_CHECKING:
    from medrecipe.images import ImageStore

SHARD_SIZE = 16  # connections per httpx client (httpx's own transport only)
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".gif": "image/gif"}
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Seconds in a rate-limit reset value such as "1s", "6m0s", "20ms" or "2.5"."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def retry_after_from(headers: httpx.Headers | dict[str, str]) -> float | None:
    """How long the server asks us to wait: retry-after(-ms), else the rate-limit reset."""
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    if "retry-after" in h:
        v = h["retry-after"].strip()
        try:
            return max(0.0, float(v))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(v)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    waits = []
    for kind in ("requests", "tokens"):
        if h.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            d = parse_duration(h.get(f"x-ratelimit-reset-{kind}", ""))
            if d is not None:
                waits.append(d)
    return max(waits) if waits else None


def _environment_proxies() -> dict[str, str | None]:
    """Proxy mounts from HTTP(S)_PROXY / ALL_PROXY / NO_PROXY, read the way httpx reads them."""
    try:
        from httpx._utils import get_environment_proxies
    except ImportError:  # a future httpx moved it: use the standard library's reading
        from urllib.request import getproxies

        found = getproxies()
        return {f"{k}://": (v if "://" in v else f"http://{v}")
                for k, v in found.items() if k in ("http", "https", "all") and v}
    return get_environment_proxies()


_SSL_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS client context per process and CA setting: building one costs ~20-50 ms of
    CPU, so the clients of every endpoint (and every run) share it."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    ctx = _SSL_CONTEXTS.get(key)
    if ctx is None:
        ctx = _SSL_CONTEXTS[key] = httpx.create_ssl_context()
    return ctx


class OpenAICompatBackend:
    """Chat completions against any OpenAI-compatible endpoint."""

    name = "openai_compat"
    supports_n = True

    def __init__(self, teacher: TeacherConfig, images: ImageStore | None = None,
                 name: str = "", transport: str | None = None):
        if not teacher.base_url:
            raise UserError(f"teacher {name or teacher.model!r}: backend openai_compat needs "
                            "base_url (for example https://api.openai.com/v1)")
        self.teacher = teacher
        self.label = name or teacher.model
        self.images = images
        self.url = teacher.base_url.rstrip("/") + "/chat/completions"
        self._secrets: list[str] = []
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if teacher.api_key_env:
            if not teacher.allow_insecure_http and not is_safe_for_secrets(teacher.base_url):
                # Checked again here (not only when the recipe is read): a key must never
                # leave in cleartext, however the config object was built.
                raise UserError(
                    f"teacher {self.label!r}: refusing to send the API key over plain http to "
                    f"{teacher.base_url}; use https or set allow_insecure_http: true")
            key = os.environ.get(teacher.api_key_env)
            if not key:
                raise UserError(
                    f"teacher {self.label!r} reads its API key from the environment variable "
                    f"{teacher.api_key_env}, which is not set; export it or change "
                    f"teachers.{self.label}.api_key_env")
            self._secrets.append(key)
            if teacher.api_key_header:
                headers[teacher.api_key_header] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        self._headers = headers
        self._params = dict(teacher.url_params) or None
        self._timeout = httpx.Timeout(teacher.timeout_s, connect=min(teacher.timeout_s, 30.0))
        self.transport = transport or teacher.http_transport
        n_shards = 1 if self.transport == "fast" else max(1, -(-teacher.max_in_flight // SHARD_SIZE))
        self._per_shard = max(1, -(-teacher.max_in_flight // n_shards))
        self._clients: list[httpx.AsyncClient] = []
        self._load: list[int] = [0] * n_shards
        self._data_urls: OrderedDict[str, str] = OrderedDict()

    def __repr__(self) -> str:  # never show headers (they hold the key)
        return f"OpenAICompatBackend(model={self.teacher.model!r}, url={self.url!r})"

    # ------------------------------------------------------------------ helpers
    def redact(self, text: str) -> str:
        """`text` with every secret replaced by ***."""
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _client(self) -> int:
        if not self._clients:
            if self.transport == "fast":
                # httpx ignores proxy variables when given a transport: mount them ourselves,
                # with httpx's own transport for proxied origins.
                proxies = _environment_proxies()
                # Plain http to the server itself needs no TLS context (building one blocks
                # the event loop for tens of ms, once per endpoint of a fleet).
                ssl_ctx = shared_ssl_context() if (
                    self.url.startswith("https:") or any(proxies.values())) else None
                mounts = {pattern: None if url is None else httpx.AsyncHTTPTransport(
                              proxy=url, verify=ssl_ctx or shared_ssl_context(),
                              limits=httpx.Limits(max_connections=self.teacher.max_in_flight))
                          for pattern, url in proxies.items()}
                self._clients = [httpx.AsyncClient(
                    headers=self._headers, timeout=self._timeout, params=self._params,
                    transport=Http1Transport(self.teacher.max_in_flight, ssl_ctx),
                    mounts=mounts)]
            else:
                limits = httpx.Limits(max_connections=self._per_shard,
                                      max_keepalive_connections=self._per_shard,
                                      keepalive_expiry=60.0)
                ssl_ctx = shared_ssl_context()
                self._clients = [httpx.AsyncClient(headers=self._headers, timeout=self._timeout,
                                                   limits=limits, params=self._params,
                                                   verify=ssl_ctx)
                                 for _ in self._load]
        load = self._load
        best = min(range(len(load)), key=load.__getitem__)
        return best

    def _data_url(self, ref: str) -> str:
        url = self._data_urls.get(ref)
        if url is not None:
            self._data_urls.move_to_end(ref)
            return url
        if self.images is None:
            raise BackendError(f"image {ref} needs an image store, and none was given",
                               retryable=False)
        try:
            path = self.images.path(ref)
        except Exception as e:  # noqa: BLE001 - an unreadable image fails this sample only
            raise BackendError(f"image {ref}: {e}", retryable=False) from None
        mime = _MIME.get(path.suffix.lower())
        if mime is None:  # TIFF, BMP: endpoints take PNG/JPEG/WebP/GIF
            buf = io.BytesIO()
            self.images.open(ref).save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
        else:
            data = path.read_bytes()
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        self._data_urls[ref] = url
        if len(self._data_urls) > 64:
            self._data_urls.popitem(last=False)
        return url

    def wire_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages as sent: image refs become data URLs; all-text content becomes a string."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                if all(p.get("type") == "text" for p in content):
                    content = "\n".join(p["text"] for p in content)
                else:
                    parts = []
                    for p in content:
                        if p.get("type") == "image":
                            parts.append({"type": "image_url",
                                          "image_url": {"url": self._data_url(p["image"])}})
                        else:
                            parts.append(p)
                    content = parts
            out.append({**m, "content": content})
        return out

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for one request."""
        s = request.sampling
        body: dict[str, Any] = {
            "model": request.model,
            "messages": self.wire_messages(request.messages),
            "n": request.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stream": False,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if "max_completion_tokens" in s.extra:
            body.pop("max_tokens")
        for k, v in s.extra.items():
            if v is None:  # `extra: {temperature: null}` removes a parameter
                body.pop(k, None)
            else:
                body[k] = v
        if request.n == 1:
            body.pop("n")
        return body

    # ------------------------------------------------------------------ the call
    async def complete(self, request: ChatRequest) -> ChatResponse:
        """One chat-completions call."""
        payload = json.dumps(self.body(request), ensure_ascii=False).encode("utf-8")
        shard = self._client()
        client = self._clients[shard]
        self._load[shard] += 1
        t0 = time.perf_counter()
        try:
            resp = await client.post(self.url, content=payload)
            raw = resp.content
        except httpx.TimeoutException:
            raise BackendError(f"timed out after {self.teacher.timeout_s:g} s",
                               retryable=True, unhealthy=True) from None
        except httpx.HTTPError as e:
            msg = self.redact(f"connection error: {type(e).__name__}: {e}")
            raise BackendError(msg, retryable=True, unhealthy=True) from None
        finally:
            self._load[shard] -= 1
        latency = time.perf_counter() - t0
        status = resp.status_code
        if status != 200:
            raise self._http_error(status, raw, resp.headers)
        if not raw.strip():
            raise BackendError("empty response body (HTTP 200)", retryable=True, status=status)
        try:
            data = json.loads(raw)
        except ValueError:
            raise BackendError(f"malformed JSON in response body ({len(raw)} bytes)",
                               retryable=True, status=status) from None
        return self._parse(data, request, latency)

    def _http_error(self, status: int, raw: bytes, headers: httpx.Headers) -> BackendError:
        detail = ""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error"):  # OpenAI, vLLM
            err = body["error"]
            detail = err.get("message", "") if isinstance(err, dict) else str(err)
        elif isinstance(body, dict) and body.get("detail"):  # FastAPI (transformers serve)
            d = body["detail"]
            detail = d if isinstance(d, str) else json.dumps(d, ensure_ascii=False)
        else:
            detail = raw[:200].decode("utf-8", "replace")
        detail = self.redact(detail.strip())[:300]
        msg = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403):
            return BackendError(msg, retryable=False, status=status, auth=True)
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return BackendError(msg, retryable=retryable, status=status,
                            retry_after=retry_after_from(headers) if retryable else None,
                            unhealthy=status >= 500)

    def _parse(self, data: Any, request: ChatRequest, latency: float) -> ChatResponse:
        if not isinstance(data, dict):
            raise BackendError("malformed response: body is not a JSON object", retryable=True)
        if data.get("error") and not data.get("choices"):
            err = data["error"]
            detail = err.get("message", "") if isinstance(err, dict) else str(err)
            raise BackendError(self.redact(f"endpoint error: {detail}")[:300], retryable=True)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendError("malformed response: no choices", retryable=True)
        completions: list[tuple[int, Completion]] = []
        for pos, ch in enumerate(choices):
            msg = ch.get("message") if isinstance(ch, dict) else None
            if not isinstance(msg, dict):
                raise BackendError("malformed response: a choice has no message", retryable=True)
            content = msg.get("content")
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            if reasoning is not None and not isinstance(reasoning, str):
                reasoning = json.dumps(reasoning)
            completions.append((ch.get("index", pos) if isinstance(ch.get("index"), int) else pos,
                                Completion(text=join_reasoning(content, reasoning),
                                           reasoning=reasoning or None,
                                           finish_reason=ch.get("finish_reason"))))
        completions.sort(key=lambda t: t[0])
        usage = data.get("usage") or {}
        out = [c for _, c in completions]
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if not isinstance(prompt_tokens, int):  # no usage reported: a rough estimate
            prompt_tokens = sum(len(json.dumps(m.get("content", ""))) for m in request.messages) // 4
        if not isinstance(completion_tokens, int):
            completion_tokens = sum(len(c.text or "") for c in out) // 4
        return ChatResponse(completions=out, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, latency_s=latency)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for c in self._clients:
            await c.aclose()
        self._clients = []
