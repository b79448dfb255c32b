"""A fault storm against the local chat server, and a SIGKILL mid-run: does the ledger hold?

    python benchmarks/faults.py                       # 500 questions x 4 samples, then a kill
    python benchmarks/faults.py --items 200 --kill-after 0.8

Part 1 (storm): the engine runs every (question, sample) against a server that fails a
random share of requests: 429 with retry-after, 500/502/503, hangs past the client timeout,
malformed and empty bodies, connections closed after reading the request (the kept-alive
connection the client reuses is gone), and bodies cut off half-way. It prints the requests
the server saw and the requests the engine's ledger counted (they must be equal: no silent
resend), samples that failed after their retries, and whether exactly one row came back for
every (question, sample).

Part 2 (kill): a subprocess runs the same engine (fan-out, one sample per request) and is
killed with SIGKILL while requests are in flight; a second run completes from the cache. It
prints how many samples the server answered twice (must be <= the in-flight limit: only
answers that were on the wire when the process died can be lost) and whether the second run
ends with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

STORM = {"429": 0.05, "500": 0.03, "502": 0.02, "503": 0.02, "timeout": 0.01,
         "malformed": 0.03, "empty": 0.03, "close": 0.04, "truncated": 0.03}


def requests(k: int, n: int):
    from medrecipe.generate import GenRequest

    return [GenRequest(item_id=f"q{i}", teacher="t", n=n,
                       messages=[{"role": "user", "content": f"Storm question number {i}?"}])
            for i in range(k)]


def teacher(base_url: str, **kw):
    from medrecipe.config import SamplingConfig, TeacherConfig

    base = dict(model="storm", base_url=base_url, max_in_flight=32, max_retries=6,
                timeout_s=0.5, backoff_base_s=0.01, backoff_max_s=0.1,
                sampling=SamplingConfig(max_tokens=64, seed=7))
    base.update(kw)
    return TeacherConfig(**base)


def storm(items: int, n: int, seed: int) -> dict:
    from medrecipe.generate import Engine
    from medrecipe.testing.chat_server import ChatServer

    with tempfile.TemporaryDirectory() as d, \
            ChatServer(latency=0.01, hang_s=1.0, chaos=STORM, chaos_seed=seed) as srv:
        t0 = time.perf_counter()
        res = Engine({"t": teacher(srv.base_url)}, Path(d) / "cache", progress=False,
                     seed=seed).run(requests(items, n))
        wall = time.perf_counter() - t0
        faults = Counter(r.answered for r in srv.received)
        rows = Counter((g.item_id, g.sample_index) for g in res.generations)
        expected = {(f"q{i}", j) for i in range(items) for j in range(n)}
        return {"server_requests": srv.count, "ledger_requests": res.requests_sent,
                "ledger_by_teacher": res.by_teacher["t"]["requests"],
                "samples": items * n, "failed": res.failures,
                "rows_complete": set(rows) == expected and max(rows.values()) == 1,
                "answers_by_kind": dict(sorted(faults.items())), "seconds": round(wall, 2)}


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from faults import requests, teacher
from medrecipe.generate import Engine
Engine({{"t": teacher({url!r}, native_n=False, max_in_flight={in_flight}, max_retries=2,
                     timeout_s=10)}}, Path({cache!r}), progress=False).run(requests({items}, {n}))
print("finished", flush=True)
"""


def kill_test(items: int, n: int, in_flight: int, kill_after: float) -> dict:
    from medrecipe.generate import Engine
    from medrecipe.testing.chat_server import ChatServer

    with tempfile.TemporaryDirectory() as d, ChatServer(latency=0.1) as srv:
        cache = str(Path(d) / "cache")
        code = _CHILD.format(bench=str(Path(__file__).parent), url=srv.base_url,
                             in_flight=in_flight, cache=cache, items=items, n=n)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        time.sleep(kill_after)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        answered_before = srv.count
        res = Engine({"t": teacher(srv.base_url, native_n=False, max_in_flight=in_flight,
                                   timeout_s=10)}, cache, progress=False).run(requests(items, n))
        # A sample is (question, seed): fan-out sends seed + sample index with each request.
        seen = Counter((json.dumps(r.body["messages"]), r.body.get("seed"))
                       for r in srv.received if r.answered == "ok")
        repaid = sum(c - 1 for c in seen.values() if c > 1)
        rows = Counter((g.item_id, g.sample_index) for g in res.generations)
        return {"requests_before_kill": answered_before, "in_flight_limit": in_flight,
                "samples_repaid": repaid, "repaid_within_in_flight": repaid <= in_flight,
                "second_run_cached": res.cached, "second_run_sent": res.requests_sent,
                "rows_complete": len(rows) == items * n and max(rows.values()) == 1
                and res.failures == 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill-items", type=int, default=400)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--kill-after", type=float, default=1.2)
    args = ap.parse_args()
    os.environ.setdefault("MEDRECIPE_NO_PROGRESS", "1")

    s = storm(args.items, args.n, args.seed)
    print(f"storm: {s['samples']} samples ({args.items} questions x n={args.n}), fault mix "
          f"{STORM}")
    print(f"  requests the server saw:        {s['server_requests']}")
    print(f"  requests the ledger counted:    {s['ledger_requests']}  "
          f"({'equal' if s['server_requests'] == s['ledger_requests'] else 'NOT EQUAL'})")
    print(f"  samples failed after retries:   {s['failed']}")
    print(f"  every (item, sample) row once:  {s['rows_complete']}")
    print(f"  server answers by kind:         {s['answers_by_kind']}")
    print(f"  wall time:                      {s['seconds']} s")

    k = kill_test(args.kill_items, 1, args.in_flight, args.kill_after)
    print(f"kill: SIGKILL after {args.kill_after} s, {args.kill_items} requests, "
          f"{args.in_flight} in flight, 0.1 s latency")
    print(f"  requests answered before kill:  {k['requests_before_kill']}")
    print(f"  samples repaid after the kill:  {k['samples_repaid']}  (in-flight limit "
          f"{k['in_flight_limit']}: {'ok' if k['repaid_within_in_flight'] else 'EXCEEDED'})")
    print(f"  second run: {k['second_run_cached']} from cache, {k['second_run_sent']} sent")
    print(f"  every (item, sample) row once:  {k['rows_complete']}")


if __name__ == "__main__":
    main()
