"""One client driving a fleet of chat servers: requests/s against the combined ceiling.

    python benchmarks/fleet.py                       # 4 servers, 64 in flight each, 0.5 s
    python benchmarks/fleet.py --endpoints 4 --in-flight 64 --latency 0.5 --requests 5120 --repeat 2

Starts --endpoints local chat servers (`python -m medrecipe.testing.chat_server --latency L`),
each in its own process, and pushes the same workload (distinct questions, one sample each,
a fresh request cache per run so every request is sent and stored) through one Engine in
this process:
  1. the fleet: one teacher with `base_urls` naming every server, `max_in_flight` per
     endpoint; ceiling = endpoints x in-flight / latency;
  2. a single endpoint with the same total in flight (endpoints x in-flight), so the same
     ceiling: what one server reaches from the same client, for comparison;
  3. failover: the fleet again, with one server killed (SIGKILL) a third of the way in;
     every sample must still be answered (none failed), the rest spread over the others.
It prints requests/s, the share of the ceiling reached (goal >= 90%), client CPU per
1,000 requests, how the requests spread over the servers (as the servers counted them and
as the engine's ledger says), and the fleet / single-endpoint ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

WORDS = ("patient presents with acute chest pain fever cough dyspnea history of hypertension "
         "diabetes examination reveals tenderness laboratory shows elevated creatinine which "
         "of the following is the most likely diagnosis").split()


def prompts(n: int, tag: str) -> list[str]:
    """Distinct question texts of about 60 words (the tag keeps runs apart)."""
    return [f"{tag} case {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(60)) + "?"
            for i in range(n)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stats(url: str) -> int:
    import httpx

    try:
        return httpx.get(url + "/stats", timeout=10).json()["count"]
    except httpx.HTTPError:
        return -1  # the server is gone (killed on purpose)


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "medrecipe.testing.chat_server",
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def generate(urls: list[str], in_flight: int, n: int, tag: str,
             kill: tuple[subprocess.Popen, float] | None = None) -> dict:
    """Run n one-sample requests through one Engine whose teacher is the fleet `urls`."""
    from medrecipe.config import SamplingConfig, TeacherConfig
    from medrecipe.generate import Engine, GenRequest

    t = TeacherConfig(model="local-model", base_urls=urls, max_in_flight=in_flight,
                      native_n=False, timeout_s=120, max_retries=6, backoff_base_s=0.25,
                      backoff_max_s=4.0, sampling=SamplingConfig(max_tokens=64, temperature=0.6))
    reqs = [GenRequest(item_id=f"q{i}", teacher="t",
                       messages=[{"role": "user", "content": [{"type": "text", "text": p}]}])
            for i, p in enumerate(prompts(n, tag))]
    before = {u: _stats(u) for u in urls}
    timer = None
    if kill is not None:
        proc, after_s = kill
        timer = threading.Timer(after_s, lambda: os.kill(proc.pid, signal.SIGKILL))
    with tempfile.TemporaryDirectory() as cache:
        engine = Engine({"t": t}, cache, progress=False)
        c0, t0 = _cpu(), time.perf_counter()
        if timer is not None:
            timer.start()
        res = engine.run(reqs)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    seen = {u: _stats(u) - before[u] if _stats(u) >= 0 else None for u in urls}
    eps = res.by_teacher["t"]["endpoints"]
    ok = sum(1 for g in res.generations if g.error is None and g.text)
    return {"wall": wall, "cpu": cpu, "ok": ok, "failures": res.failures,
            "sent": res.requests_sent, "seen": seen,
            "ledger": {u: eps[u]["requests"] for u in urls},
            "down": {u: eps[u]["times_down"] for u in urls}}


def show(label: str, r: dict, n: int, ceiling: float) -> float:
    rate = n / r["wall"]
    spread = ", ".join(f"{(s if s is not None else 'killed')}/{r['ledger'][u]}"
                       for u, s in r["seen"].items())
    print(f"{label}: {rate:,.1f} req/s = {100 * rate / ceiling:.1f}% of the {ceiling:,.0f} req/s "
          f"ceiling; wall {r['wall']:.2f} s; client CPU {1000 * r['cpu'] / n:.3f} s per 1,000 "
          f"requests; answers {r['ok']:,}/{n:,}, failed {r['failures']}; requests sent "
          f"{r['sent']:,}; per server (server count/ledger): {spread}")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--in-flight", type=int, default=64, help="per endpoint")
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--requests", type=int, default=5120)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-failover", action="store_true")
    args = ap.parse_args()

    e, w, lat, n = args.endpoints, args.in_flight, args.latency, args.requests
    ceiling = e * w / lat
    print(f"workload: {n:,} requests; {e} servers x {w} in flight, latency {lat:g} s -> combined "
          f"ceiling {e} x {w} / {lat:g} = {ceiling:,.0f} req/s ({n / ceiling:.2f} s for the "
          f"workload); {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    servers = [start_server(lat) for _ in range(e)]
    urls = [u for _, u in servers]
    try:
        fleet_rates, single_rates = [], []
        for rep in range(args.repeat):
            r = generate(urls, w, n, f"fleet{rep}")
            fleet_rates.append(show(f"[{rep + 1}] fleet of {e} endpoints", r, n, ceiling))
            r = generate(urls[:1], e * w, n, f"single{rep}")
            single_rates.append(show(f"[{rep + 1}] single endpoint, {e * w} in flight", r, n,
                                     ceiling))
        best, single = max(fleet_rates), max(single_rates)
        print(f"fleet best: {best:,.1f} req/s = {100 * best / ceiling:.1f}% of the combined "
              f"ceiling (goal >= 90%); single endpoint best: {single:,.1f} req/s = "
              f"{100 * single / ceiling:.1f}%; fleet / single: {best / single:.2f}x")
        if not args.skip_failover and e > 1:
            victim = servers[-1][0]
            r = generate(urls, w, n, "failover", kill=(victim, n / ceiling / 3))
            after = (e - 1) * w / lat
            at = n / ceiling / 3
            show(f"failover: server {e} killed (SIGKILL) at {at:.2f} s", r, n, ceiling)
            # The best any client could do: the full ceiling until the kill, then the rest.
            ideal = at + (n - ceiling * at) / after
            print(f"  after the kill the ceiling is {after:,.0f} req/s, so the best possible "
                  f"wall time is {ideal:.2f} s: reached {100 * ideal / r['wall']:.1f}% of it; "
                  f"samples lost: {n - r['ok']}; calls retried: {r['sent'] - n} (those in flight on the "
                  f"killed server, then probes); times each endpoint was taken out: "
                  f"{list(r['down'].values())}")
    finally:
        for proc, _ in servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
