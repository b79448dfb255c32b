"""Generation engine throughput against a local chat-completions server with a fixed latency.

    python benchmarks/engine.py                      # 5,000 requests, 256 in flight, 0.5 s
    python benchmarks/engine.py --requests 2000 --in-flight 128 --latency 0.2 --repeat 2

Starts `medrecipe.testing.chat_server` in its own process (every answer takes exactly
--latency seconds), then pushes the same workload (distinct questions, one sample each)
through:
  1. medrecipe's Engine (openai_compat backend, default lean HTTP/1.1 transport; request
     cache in a fresh temporary folder, so every request is really sent and stored);
  2. the same Engine with `http_transport: httpx` (httpx's own pooled transport), for
     reference;
  3. bespokelabs-curator (`curator.LLM`, backend "openai" pointed at the same server,
     same concurrency, rate limits set out of the way, telemetry off, cache in a
     temporary folder).
Each runs in its own subprocess; wall time and CPU time cover only the call that turns
the prompts into answers. It prints requests/s against the ceiling (in-flight / latency),
client CPU seconds per 1,000 requests, the server's own CPU, and the engine/curator ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("patient presents with acute chest pain fever cough dyspnea history of hypertension "
         "diabetes examination reveals tenderness laboratory shows elevated creatinine which "
         "of the following is the most likely diagnosis").split()


def prompts(n: int) -> list[str]:
    """Distinct question texts of about 60 words."""
    return [f"Case {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(60)) + "?"
            for i in range(n)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------- workers


def work_engine(base_url: str, n: int, in_flight: int, transport: str) -> dict:
    from medrecipe.config import SamplingConfig, TeacherConfig
    from medrecipe.generate import Engine, GenRequest

    t = TeacherConfig(model="local-model", base_url=base_url, max_in_flight=in_flight,
                      http_transport=transport, native_n=False, timeout_s=120,
                      sampling=SamplingConfig(max_tokens=64, temperature=0.6))
    reqs = [GenRequest(item_id=f"q{i}", teacher="t",
                       messages=[{"role": "user", "content": [{"type": "text", "text": p}]}])
            for i, p in enumerate(prompts(n))]
    with tempfile.TemporaryDirectory() as cache:
        engine = Engine({"t": t}, cache, progress=False)
        c0, t0 = _cpu(), time.perf_counter()
        res = engine.run(reqs)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    ok = sum(1 for g in res.generations if g.error is None and g.text)
    return {"wall": wall, "cpu": cpu, "ok": ok, "failures": res.failures}


def work_curator(base_url: str, n: int, in_flight: int) -> dict:
    # Offline: litellm ships the cl100k_base tokenizer file that curator's tiktoken needs,
    # litellm's cost map is read from the package, telemetry and the hosted viewer are off.
    tok_dir = None
    try:
        import importlib.util

        spec = importlib.util.find_spec("litellm")
        if spec and spec.origin:
            tok_dir = str(Path(spec.origin).parent / "litellm_core_utils" / "tokenizers")
    except ImportError:
        pass
    cache_dir = tempfile.mkdtemp(prefix="curator-bench-")
    os.environ.update(TELEMETRY_ENABLED="false", LITELLM_LOCAL_MODEL_COST_MAP="True",
                      HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                      CURATOR_DISABLE_RICH_DISPLAY="1", CURATOR_CACHE_DIR=cache_dir,
                      OPENAI_API_KEY="sk-local-benchmark")
    if tok_dir:
        os.environ["TIKTOKEN_CACHE_DIR"] = tok_dir
    import logging

    from bespokelabs import curator

    logging.getLogger("bespokelabs.curator").setLevel(logging.WARNING)
    llm = curator.LLM(
        model_name="local-model", backend="openai",
        generation_params={"max_tokens": 64, "temperature": 0.6},
        backend_params={"base_url": base_url, "api_key": "sk-local-benchmark",
                        "max_concurrent_requests": in_flight,
                        "max_requests_per_minute": 100_000_000,
                        "max_tokens_per_minute": 100_000_000_000,
                        "request_timeout": 120, "max_retries": 3})
    ps = prompts(n)
    c0, t0 = _cpu(), time.perf_counter()
    res = llm(ps)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    ds = getattr(res, "dataset", res)
    ok = sum(1 for r in ds if r.get("response"))
    return {"wall": wall, "cpu": cpu, "ok": ok, "failures": n - ok}


# ---------------------------------------------------------------------------- driver


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(base_url: str) -> dict:
    import httpx

    return httpx.get(base_url + "/stats", timeout=10).json()


def _worker(kind: str, base_url: str, n: int, in_flight: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--base-url", base_url,
           "--requests", str(n), "--in-flight", str(in_flight)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-8:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-curator", action="store_true")
    ap.add_argument("--skip-httpx", action="store_true")
    ap.add_argument("--worker", choices=["fast", "httpx", "curator"], help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        if args.worker == "curator":
            out = work_curator(args.base_url, args.requests, args.in_flight)
        else:
            out = work_engine(args.base_url, args.requests, args.in_flight, args.worker)
        print("RESULT " + json.dumps(out), flush=True)
        return

    n, w, lat = args.requests, args.in_flight, args.latency
    ceiling = w / lat
    ideal = n / ceiling
    print(f"workload: {n:,} requests, {w} in flight, server latency {lat:g} s -> ceiling "
          f"{ceiling:,.0f} req/s ({ideal:.2f} s for the workload); {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    server = subprocess.Popen([sys.executable, "-m", "medrecipe.testing.chat_server",
                               "--latency", str(lat)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        base_url = f"http://127.0.0.1:{port}/v1"
        kinds = [("medrecipe engine (httpx + lean HTTP/1.1 transport)", "fast")]
        if not args.skip_httpx:
            kinds.append(("medrecipe engine (httpx default transport)", "httpx"))
        if not args.skip_curator:
            kinds.append(("bespokelabs-curator (openai backend)", "curator"))
        results: dict[str, list[float]] = {}
        for rep in range(args.repeat):
            for label, kind in kinds:
                before, s0 = _stats(base_url)["count"], _server_cpu(server.pid)
                r = _worker(kind, base_url, n, w, timeout=max(600.0, 30 * ideal))
                sent = _stats(base_url)["count"] - before
                if "error" in r:
                    print(f"{label}: could not run: {r['error']}")
                    continue
                rate = n / r["wall"]
                results.setdefault(kind, []).append(rate)
                srv_cpu = _server_cpu(server.pid) - s0
                print(f"[{rep + 1}] {label}: {rate:,.1f} req/s = {100 * rate / ceiling:.1f}% of "
                      f"ceiling; wall {r['wall']:.2f} s; client CPU {1000 * r['cpu'] / n:.3f} s "
                      f"per 1,000 requests; server CPU {1000 * srv_cpu / n:.3f} s per 1,000; "
                      f"answers {r['ok']:,}/{n:,}; requests seen by server {sent:,}")
        if "fast" in results:
            best = max(results["fast"])
            print(f"engine best: {best:,.1f} req/s = {100 * best / ceiling:.1f}% of the ceiling "
                  f"(target >= 90%)")
            if "curator" in results:
                cur = max(results["curator"])
                print(f"engine / curator throughput ratio: {best / cur:.2f}x "
                      f"({best:,.1f} vs {cur:,.1f} req/s)")
            elif not args.skip_curator:
                print("curator: no result (see the error above)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
