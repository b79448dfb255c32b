"""The review page: a small HTTP server on 127.0.0.1 (standard library only).

Routes (JSON unless noted):

    GET  /                    the page (HTML + script)
    GET  /api/state           dimensions, reviewer, every item's label count, where to resume
    GET  /api/item/<i>        item i with its context, trace and this reviewer's labels
    GET  /img/<i>/<k>         image k of item i (bytes from the run's image store)
    POST /api/label           {"item_id", "dimension", "value": true | false | null}
    GET  /api/summary         agreement rates per dimension (see summary.py)

A label is answered 200 only after it is on disk (labels.py). Requests whose Host header
is not this server's loopback address are refused (no DNS rebinding), and a label must be
posted as JSON (a cross-site form cannot send that without a preflight).

Resuming: the page opens at the item the reviewer labelled last, or at the next item not
fully labelled when that one is complete; with no labels yet, at the first item.
"""

from __future__ import annotations

import json
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from medrecipe.review.labels import DIMENSION_KEYS, DIMENSIONS, LabelStore
from medrecipe.review.source import ReviewItem, image_folder, load_review_items
from medrecipe.review.summary import summarize_labels

LABELS = "review/labels.jsonl"
MAX_BODY = 64 * 1024


class ReviewApp:
    """The state behind the page: items, the label store and the reviewer."""

    def __init__(self, run_dir: str | Path, reviewer: str,
                 items: list[ReviewItem] | None = None):
        from medrecipe.images import ImageStore

        self.run_dir = Path(run_dir)
        self.reviewer = reviewer
        self.items = items if items is not None else load_review_items(run_dir)
        self.index = {ri.item.id: k for k, ri in enumerate(self.items)}
        root = self.run_dir if self.run_dir.is_dir() else self.run_dir.parent
        self.store = LabelStore(root / LABELS)
        folder = image_folder(run_dir)
        self.images = ImageStore(folder) if folder is not None else None

    def labels_of(self, item_id: str) -> dict[str, bool]:
        """This reviewer's current labels of one item."""
        return {d: v for (r, i, d), v in self.store.latest(self.reviewer).items() if i == item_id}

    def resume_index(self) -> int:
        """Where the reviewer stopped (see the module docstring)."""
        mine = [e for e in self.store.events() if e.get("reviewer") == self.reviewer
                and e.get("item_id") in self.index]
        if not mine:
            return 0
        last = self.index[mine[-1]["item_id"]]
        latest = self.store.latest(self.reviewer)
        done = [all((self.reviewer, ri.item.id, d) in latest for d in DIMENSION_KEYS)
                for ri in self.items]
        if not done[last]:
            return last
        n = len(self.items)
        return next(((last + k) % n for k in range(1, n) if not done[(last + k) % n]), last)

    def state(self) -> dict[str, Any]:
        latest = self.store.latest(self.reviewer)
        counts = {ri.item.id: sum((self.reviewer, ri.item.id, d) in latest for d in DIMENSION_KEYS)
                  for ri in self.items}
        return {"reviewer": self.reviewer, "run": str(self.run_dir),
                "dimensions": [{"key": k, "title": t} for k, t in DIMENSIONS],
                "items": [{"id": ri.item.id, "labelled": counts[ri.item.id]} for ri in self.items],
                "resume": self.resume_index()}

    def item(self, k: int) -> dict[str, Any]:
        ri = self.items[k]
        return {"index": k, **ri.view(), "labels": self.labels_of(ri.item.id)}

    def image(self, k: int, j: int) -> Path | None:
        if self.images is None or not 0 <= k < len(self.items):
            return None
        refs = self.items[k].item.images
        if not 0 <= j < len(refs) or not self.images.has(refs[j]):
            return None
        return self.images.path(refs[j])


def _page() -> bytes:
    return (resources.files("medrecipe.review") / "page.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    app: ReviewApp
    server_version = "medrecipe-review"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the terminal shows the URL, not every request

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"))

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        host = (self.headers.get("Host") or "").lower()
        return host in {f"127.0.0.1:{port}", f"localhost:{port}"}

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return self._json({"error": "unexpected Host header"}, HTTPStatus.FORBIDDEN)
        path = self.path.split("?", 1)[0]
        app = self.app
        if path == "/":
            return self._send(200, _page(), "text/html; charset=utf-8")
        if path == "/api/state":
            return self._json(app.state())
        if path == "/api/summary":
            return self._json(summarize_labels(app.store, [ri.item.id for ri in app.items]))
        m = re.fullmatch(r"/api/item/(\d+)", path)
        if m and int(m.group(1)) < len(app.items):
            return self._json(app.item(int(m.group(1))))
        m = re.fullmatch(r"/img/(\d+)/(\d+)", path)
        if m:
            p = app.image(int(m.group(1)), int(m.group(2)))
            if p is not None:
                ctype = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
                return self._send(200, p.read_bytes(), ctype)
        self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return self._json({"error": "unexpected Host header"}, HTTPStatus.FORBIDDEN)
        if self.path != "/api/label":
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json({"error": "send JSON"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        size = int(self.headers.get("Content-Length") or 0)
        if not 0 < size <= MAX_BODY:
            return self._json({"error": "bad body size"}, HTTPStatus.BAD_REQUEST)
        try:
            body = json.loads(self.rfile.read(size))
            item_id, dim, value = body["item_id"], body["dimension"], body.get("value")
        except (ValueError, KeyError, TypeError):
            return self._json({"error": "expected {item_id, dimension, value}"},
                              HTTPStatus.BAD_REQUEST)
        if (item_id not in self.app.index or dim not in DIMENSION_KEYS
                or not (value is None or isinstance(value, bool))):
            return self._json({"error": "unknown item or dimension, or value not true/false/null"},
                              HTTPStatus.BAD_REQUEST)
        rec = self.app.store.add(item_id, dim, value, self.app.reviewer)
        self._json({"saved": True, "label": rec})


def make_server(run_dir: str | Path, *, port: int = 8765, reviewer: str = "reviewer",
                host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A review server for `run_dir` bound to the loopback address (port 0: any free port)."""
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError("the review page only listens on the loopback address")
    app = ReviewApp(run_dir, reviewer)
    handler = type("ReviewHandler", (_Handler,), {"app": app})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


__all__ = ["ReviewApp", "make_server", "LABELS"]
