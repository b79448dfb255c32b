"""Content-addressed request cache: one SQLite row per sampled response, written on arrival.

The key of a sample is a SHA-256 over (backend, model, sampling parameters, rendered
messages, image refs, sample index). Image refs are themselves content hashes, so the
key changes whenever the bytes sent would change. The database runs in WAL mode with
`synchronous=NORMAL`: a committed row survives the process being killed at any moment.
Only successful responses are stored; failures are retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medrecipe.config import SamplingConfig
from medrecipe.errors import UserError
from medrecipe.locks import PathLock

CACHE_FILE = "requests.sqlite"
KEY_VERSION = 1

__all__ = ["CACHE_FILE", "RequestCache", "ShardCache", "base_key", "request_key", "sample_key",
           "shard_cache_path"]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def base_key(backend: str, model: str, sampling: SamplingConfig,
             messages: Sequence[Mapping[str, Any]], images: Sequence[str] = ()) -> str:
    """Hash of everything in a request except the sample index."""
    blob = _canonical({
        "v": KEY_VERSION,
        "backend": backend,
        "model": model,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                     "max_tokens": sampling.max_tokens, "seed": sampling.seed,
                     "extra": sampling.extra},
        "messages": list(messages),
        "images": list(images),
    })
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sample_key(base: str, sample_index: int) -> str:
    """Key of one sample of a request."""
    return hashlib.sha256(f"{base}:{sample_index}".encode()).hexdigest()


def request_key(backend: str, model: str, sampling: SamplingConfig,
                messages: Sequence[Mapping[str, Any]], images: Sequence[str],
                sample_index: int) -> str:
    """Cache key of one sample: base key over the request, then the sample index."""
    return sample_key(base_key(backend, model, sampling, messages, images), sample_index)


class RequestCache:
    """SQLite (WAL) store of sampled responses keyed by `request_key`."""

    def __init__(self, path: str | Path):
        p = Path(path)
        if p.suffix not in (".sqlite", ".db"):
            p = p / CACHE_FILE
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        # One process at a time: a second one would send requests the first has in flight.
        self._lock = PathLock(p.with_name(p.name + ".lock"), f"request cache {p}").acquire()
        try:
            self._db = sqlite3.connect(str(p), timeout=60.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, data TEXT NOT NULL, created REAL NOT NULL)")
        except sqlite3.Error as e:
            self._lock.release()
            raise UserError(f"cannot open the request cache {p}: {e}; check that the folder "
                            "is writable and the disk is not full") from None
        except BaseException:
            self._lock.release()
            raise

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"

    def get_many(self, keys: Sequence[str], item_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Stored records for the keys that are present (`item_id`: what they belong to)."""
        del item_id  # used by ShardCache to find answers stored under another layout
        out: dict[str, dict[str, Any]] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for k, data in self._db.execute(
                    f"SELECT key, data FROM responses WHERE key IN ({marks})", chunk):
                out[k] = json.loads(data)
        return out

    def get(self, key: str) -> dict[str, Any] | None:
        """One stored record, or None."""
        return self.get_many([key]).get(key)

    def put_many(self, records: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Store records and commit at once (one transaction)."""
        now = time.time()
        rows = [(k, _canonical(r), now) for k, r in records]
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses (key, data, created) VALUES (?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store one record and commit."""
        self.put_many([(key, record)])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?",
                                (key,)).fetchone() is not None

    def close(self) -> None:
        """Close the database (the WAL is checkpointed by SQLite) and release the lock."""
        self._db.close()
        self._lock.release()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARD_CACHE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.sqlite$")


def shard_cache_path(folder: str | Path, shard: int, n_shards: int) -> Path:
    """The cache file of one data shard (`requests.sqlite` when there is one shard)."""
    folder = Path(folder)
    if n_shards <= 1:
        return folder / CACHE_FILE
    return folder / f"shard-{shard:05d}-of-{n_shards:05d}.sqlite"


class ShardCache(RequestCache):
    """The request cache of one data shard: one SQLite file, written by one process.

    A run's cache is sharded like its data (shard i of n answers the items of shard i), so
    no SQLite file is written from several machines. Answers stored under another shard
    layout of the same folder (an earlier run with another shard count, or the single
    `requests.sqlite` of an unsharded run) are found too: a miss looks the key up in the file
    the item maps to under each other layout (read-only) and copies what it finds, so a
    changed shard count never pays for a request twice.
    """

    def __init__(self, folder: str | Path, shard: int, n_shards: int):
        self.folder = Path(folder)
        self.shard, self.n_shards = shard, n_shards
        super().__init__(shard_cache_path(self.folder, shard, n_shards))
        self._layouts: set[int] = set()
        for p in self.folder.glob("*.sqlite"):
            m = _SHARD_CACHE.match(p.name)
            other = int(m.group(2)) if m else (1 if p.name == CACHE_FILE else None)
            if other is not None and other != n_shards:
                self._layouts.add(other)
        self._readers: dict[Path, sqlite3.Connection] = {}

    def get_many(self, keys: Sequence[str], item_id: str | None = None) -> dict[str, dict[str, Any]]:
        hits = super().get_many(keys)
        missing = [k for k in keys if k not in hits]
        if not missing or not self._layouts:
            return hits
        from medrecipe.shards import shard_of

        for n in sorted(self._layouts):
            shards = [shard_of(item_id, n)] if item_id is not None else range(n)
            for s in shards:
                found = self._read_other(shard_cache_path(self.folder, s, n), missing)
                if found:
                    self.put_many(found.items())
                    hits.update(found)
                    missing = [k for k in missing if k not in found]
                if not missing:
                    return hits
        return hits

    def _read_other(self, path: Path, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not path.exists():
            return {}
        db = self._readers.get(path)
        if db is None:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0,
                                 check_same_thread=False)
            self._readers[path] = db
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for k, data in db.execute(f"SELECT key, data FROM responses WHERE key IN ({marks})",
                                      chunk):
                out[k] = json.loads(data)
        return out

    def close(self) -> None:
        for db in self._readers.values():
            db.close()
        self._readers.clear()
        super().close()
