"""Load test: rankings, frames, summary and torrent registration at a fixed request rate.

A real uvicorn server in a child process on loopback over a synthetic study;
an open-loop generator sends `rate` requests/s for `seconds` (bounded in count
and time) and prints throughput, errors and latency percentiles, with /healthz
at the same rate measured first as the harness's own baseline.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from swarmwatch.auth import create_api_key
from swarmwatch.registry import create_study
from swarmwatch.store import Database

#: Requests in flight at most: past this the generator waits (it never grows without limit).
MAX_IN_FLIGHT = 256
#: A request slower than this is an error: far past any page-load budget.
REQUEST_TIMEOUT = 10.0
#: After the sending window, this long for answers before the rest are cancelled.
DRAIN_SECONDS = 15.0
#: How often the generator prints where it is.
PROGRESS_SECONDS = 2.0


def request_mix(
    study_id: int, title_study: int, rng: random.Random
) -> tuple[str, str, dict[str, Any]]:
    """One request of the mix: (class, method+path, params or json)."""
    r = rng.random()
    if r < 0.45:
        level = rng.choice(["city", "metro", "country"])
        metric = rng.choice(["absolute", "per_capita"])
        return (
            "rankings",
            f"GET /api/v1/studies/{study_id}/rankings",
            {
                "level": level,
                "metric": metric,
                "limit": 50,
            },
        )
    if r < 0.70:
        return "frames", f"GET /api/v1/studies/{study_id}/frames", {"interval": 3600, "res": 4}
    if r < 0.80:
        return "summary", f"GET /api/v1/studies/{study_id}/summary", {}
    ih = f"{rng.getrandbits(160):040x}"
    return "register", "POST /api/v1/torrents", {"study_id": title_study, "infohash": ih}


async def drive(
    base: str,
    key: str,
    rate: float,
    seconds: float,
    make: Any,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    progress: Any = None,
) -> tuple[dict[str, list[float]], dict[str, int], float]:
    """Send `rate` requests/s for `seconds`, open loop; returns (latencies, errors, elapsed).

    Bounded in every direction: at most MAX_IN_FLIGHT requests wait at once, each
    gives up after request_timeout, and whatever is still running at the overall
    deadline (seconds + DRAIN_SECONDS) is cancelled and counted as an error.
    """
    say = progress or functools.partial(print, flush=True)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    total = int(rate * seconds)
    start = time.perf_counter()
    deadline = start + seconds + DRAIN_SECONDS
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"},
        limits=limits,
        timeout=request_timeout,
    ) as client:

        async def one(kind: str, call: str, args: dict[str, Any]) -> None:
            method, path = call.split(" ", 1)
            t0 = time.perf_counter()
            ok = False
            try:
                if method == "GET":
                    resp = await client.get(path, params=args)
                else:
                    resp = await client.post(path, json=args)
                ok = resp.status_code < 300
            except httpx.HTTPError:
                pass
            finally:
                # Cancelled at the deadline counts too: a request that never ends is an error.
                latencies[kind].append(time.perf_counter() - t0)
                if not ok:
                    errors[kind] += 1
                gate.release()

        async def report() -> None:
            while True:
                await asyncio.sleep(PROGRESS_SECONDS)
                done = sum(len(v) for v in latencies.values())
                say(
                    f"  {time.perf_counter() - start:5.1f} s: sent {len(tasks)}, "
                    f"done {done}, errors {sum(errors.values())}"
                )

        tasks: list[asyncio.Task[None]] = []
        reporter = asyncio.create_task(report())
        try:
            for i in range(total):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(gate.acquire(), remaining)
                except TimeoutError:
                    break
                tasks.append(asyncio.create_task(one(*make())))
            if tasks:
                _done, pending = await asyncio.wait(
                    tasks, timeout=max(0.0, deadline - time.perf_counter())
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        elapsed = time.perf_counter() - start
    unsent = total - len(tasks)
    if unsent:  # the generator could not keep up before the deadline: those are failures too
        errors["unsent"] += unsent
    return latencies, errors, elapsed


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: rate=300 (requests/s), seconds=20, scale=0.001 (of alpha60's 33.8 M peers), url=."""
    from swarmwatch.bench.query import _load, _serve

    rate = float(options.get("rate", 300))
    seconds = float(options.get("seconds", 20))
    scale = float(options.get("scale", 0.001))
    with tempfile.TemporaryDirectory() as tmp:
        url = str(options.get("url") or f"sqlite:///{Path(tmp) / 'load.db'}")
        db = Database(url)
        db.upgrade()
        print(f"loading a synthetic study at scale {scale:g} ...")
        _load(db, scale)
        with db.session() as session:
            key = create_api_key(session, "load test")
            registry_study = create_study(session, f"load test registrations {time.time():.0f}").id
        study_id = 1
        # Limits raised for the run: the test measures capacity, not the rate limiter.
        os.environ["SWARMWATCH_API_WRITE_RATE"] = os.environ["SWARMWATCH_API_READ_RATE"] = "100000"
        os.environ["SWARMWATCH_API_WRITE_BURST"] = os.environ["SWARMWATCH_API_READ_BURST"] = (
            "100000"
        )
        proc, base = _serve(url)
        try:
            rng = random.Random(1)
            for path, params in (("frames", {"interval": 3600, "res": 4}), ("summary", {})):
                httpx.get(f"{base}/api/v1/studies/{study_id}/{path}", params=params, timeout=60)
            base_lat, base_err, base_elapsed = asyncio.run(
                drive(base, key, rate, min(seconds, 5), lambda: ("healthz", "GET /healthz", {}))
            )
            lat, err, elapsed = asyncio.run(
                drive(base, key, rate, seconds, lambda: request_mix(study_id, registry_study, rng))
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck behind its busy threads: never hang here
                proc.kill()
                proc.wait(timeout=30)
        db.dispose()
    sent = sum(len(v) for v in lat.values())
    errors = sum(err.values())
    figures: dict[str, float] = {
        "target_rps": rate,
        "achieved_rps": sent / elapsed,
        "requests": float(sent),
        "errors": float(errors),
        "baseline_healthz_p50_ms": _pct(base_lat["healthz"], 0.5),
        "baseline_healthz_p95_ms": _pct(base_lat["healthz"], 0.95),
        "baseline_errors": float(sum(base_err.values())),
    }
    b50, b95 = figures["baseline_healthz_p50_ms"], figures["baseline_healthz_p95_ms"]
    print(
        f"baseline /healthz at {rate:g}/s for {base_elapsed:.1f} s: "
        f"p50 {b50:.1f} ms, p95 {b95:.1f} ms"
    )
    print(
        f"mix at {rate:g}/s for {seconds:g} s: {sent} requests, {figures['achieved_rps']:.0f}/s, "
        f"{errors} errors"
    )
    for kind in sorted(lat):
        p50, p95, p99 = (_pct(lat[kind], q) for q in (0.5, 0.95, 0.99))
        figures[f"{kind}_p50_ms"], figures[f"{kind}_p95_ms"] = p50, p95
        figures[f"{kind}_errors"] = float(err.get(kind, 0))
        print(
            f"  {kind:>9}: n={len(lat[kind]):5d}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
            f"p99 {p99:7.1f} ms  errors {err.get(kind, 0)}  "
            f"(p95/healthz p95 {p95 / max(figures['baseline_healthz_p95_ms'], 1e-9):.1f}x)"
        )
    figures["median_of_p95_ms"] = statistics.median(figures[f"{k}_p95_ms"] for k in lat)
    return figures


def main(argv: list[str]) -> int:
    """`python -m swarmwatch.bench.load rate=300 seconds=15`: exit 1 if any request failed."""
    options: dict[str, Any] = {}
    for item in argv:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"options are key=value, got {item!r}")
        options[name] = raw
    figures = run_benchmark(**options)
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
