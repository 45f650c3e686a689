"""Load test: rankings, frames, summary and torrent registration at a fixed request rate.

A real uvicorn server in a child process on loopback over a synthetic study; wrk
(C, one process per request class, Lua script load.lua) sends the mix open loop at
`rate` requests/s for `seconds`, and /healthz at the same rate is measured first as
the baseline. A generator in Python cost as much CPU as the server it measured.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.server import serve, stop
from swarmwatch.auth import create_api_key, verify_api_key
from swarmwatch.registry import create_study
from swarmwatch.store import Database

LUA_SCRIPT = Path(__file__).with_name("load.lua")
#: Share of the request rate per class (summary rides along: the web page asks for it too).
MIX = {"rankings": 0.45, "frames": 0.25, "summary": 0.10, "register": 0.20}
MIX_READS = ("rankings", "frames", "summary")
#: The status every request of a class must get; anything else is an error.
EXPECTED = {"healthz": "200", "rankings": "200", "frames": "200", "summary": "200"}
EXPECTED["register"] = "201"
#: A request slower than this is an error (wrk counts it as a timeout).
REQUEST_TIMEOUT_S = 10
#: Requests per second one connection is asked to carry: a connection waits for each
#: answer, so this allows answers up to 1/PER_CONNECTION_RPS s (200 ms) without missing
#: the rate; it also bounds the requests in flight (rate / PER_CONNECTION_RPS).
PER_CONNECTION_RPS = 5
#: Seconds of unmeasured mix before the baseline (first answers of every worker).
WARM_UP_S = 5
#: Held rate: below this share of the target, the run fails (the server fell behind).
RATE_HELD = 0.97


@dataclass
class ClassResult:
    """What wrk measured for one request class (latency from sending to the answer)."""

    kind: str
    target_rps: float
    requests: int
    duration_s: float
    statuses: dict[str, int]
    cache_hits: int
    socket_errors: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int = field(init=False)

    def __post_init__(self) -> None:
        wrong = sum(n for s, n in self.statuses.items() if s != EXPECTED[self.kind])
        self.errors = wrong + sum(self.socket_errors.values())

    @property
    def achieved_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk_command(base: str, kind: str, rate: float, seconds: float, args: list[str]) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("the load generator is wrk: apt-get install wrk (scripts/test.sh does)")
    connections = max(2, math.ceil(rate / PER_CONNECTION_RPS))
    return [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "-s",
        str(LUA_SCRIPT),
        base,
        "--",
        kind,
        f"{rate:g}",
        *args,
    ]


def parse_wrk(output: str, target_rps: float) -> ClassResult:
    for line in output.splitlines():
        if line.startswith("SWARMWATCH-LOAD "):
            d = json.loads(line.removeprefix("SWARMWATCH-LOAD "))
            return ClassResult(
                kind=d["kind"],
                target_rps=target_rps,
                requests=d["requests"],
                duration_s=d["duration_s"],
                statuses={str(k): int(v) for k, v in d["statuses"].items()},
                cache_hits=d["cache_hits"],
                socket_errors={k: int(d[k]) for k in ("connect", "read", "write", "timeout")},
                p50_ms=d["p50_ms"],
                p95_ms=d["p95_ms"],
                p99_ms=d["p99_ms"],
                max_ms=d["max_ms"],
            )
    raise RuntimeError(f"wrk printed no result line:\n{output}")


def run_classes(
    base: str, rates: dict[str, float], seconds: float, args: dict[str, list[str]]
) -> dict[str, ClassResult]:
    """One wrk per class, all at once; each keeps its own rate and latency histogram."""
    procs = {
        kind: subprocess.Popen(
            wrk_command(base, kind, rate, seconds, args.get(kind, [])),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for kind, rate in rates.items()
        if rate > 0
    }
    results = {}
    for kind, proc in procs.items():
        out, _ = proc.communicate(timeout=seconds + 3 * REQUEST_TIMEOUT_S)
        results[kind] = parse_wrk(out, rates[kind])
    return results


def mix_paths(study_id: int) -> list[str]:
    """The GET paths load.lua sends, byte for byte (the answer cache keys on them)."""
    paths = [
        f"/api/v1/studies/{study_id}/rankings?level={level}&metric={metric}&limit=50"
        for level in ("city", "metro", "country")
        for metric in ("absolute", "per_capita")
    ]
    paths.append(f"/api/v1/studies/{study_id}/frames?interval=3600&res=4")
    paths.append(f"/api/v1/studies/{study_id}/summary")
    return paths


def warm_up(base: str, path: str) -> float:
    """Milliseconds for one answer; it must be a 200."""
    t0 = time.perf_counter()
    resp = httpx.get(base + path, headers={"Accept-Encoding": "gzip"}, timeout=120)
    resp.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def mix_rates(rate: float) -> dict[str, float]:
    return {kind: rate * share for kind, share in MIX.items()}


def server_flavour() -> str:
    """Which HTTP parser and event loop uvicorn picks here ("auto" prefers the C ones)."""
    parts = []
    for module, fast, slow in (("httptools", "httptools", "h11"), ("uvloop", "uvloop", "asyncio")):
        try:
            __import__(module)
            parts.append(fast)
        except ImportError:
            parts.append(slow)
    return "/".join(parts)


def report(
    title: str, results: dict[str, ClassResult], seconds: float, baseline: ClassResult | None
) -> None:
    total = sum(r.requests for r in results.values())
    target = sum(r.target_rps for r in results.values())
    achieved = sum(r.achieved_rps for r in results.values())
    errors = sum(r.errors for r in results.values())
    print(
        f"{title}: target {target:g}/s for {seconds:g} s: {total} requests, "
        f"achieved {achieved:.0f}/s, errors {errors}"
    )
    for kind, r in results.items():
        wrong = {s: n for s, n in r.statuses.items() if s != EXPECTED[kind]}
        socket_errors = {k: n for k, n in r.socket_errors.items() if n}
        ratio = f"  p95 {r.p95_ms / baseline.p95_ms:4.1f}x healthz" if baseline else ""
        print(
            f"  {kind:>9}: {r.achieved_rps:6.1f}/s of {r.target_rps:g}  n={r.requests:5d}  "
            f"p50 {r.p50_ms:7.2f}  p95 {r.p95_ms:7.2f}  p99 {r.p99_ms:7.2f}  "
            f"max {r.max_ms:7.1f} ms  errors {r.errors}"
            + (f" {wrong}" if wrong else "")
            + (f" {socket_errors}" if socket_errors else "")
            + (
                f"  cache hits {r.cache_hits / max(r.requests, 1):.0%}"
                if kind != "register"
                else ""
            )
            + ratio
        )


def missing() -> str | None:
    return None if shutil.which("wrk") else "wrk, the load generator: apt-get install wrk"


def run_benchmark(**options: Any) -> dict[str, float]:
    """Options: rate=300 (requests/s), seconds=15, scale=0.001 (of alpha60's 33.8 M peers),
    url= (default a fresh SQLite file), workers=1, cache=1.0 (answer reuse, s; 0: off)."""
    from bench.query import _load

    rate = float(options.get("rate", 300))
    seconds = float(options.get("seconds", 15))
    scale = float(options.get("scale", 0.001))
    workers = int(options.get("workers", 1))
    cache = float(options.get("cache", 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        url = str(options.get("url") or f"sqlite:///{Path(tmp) / 'load.db'}")
        db = Database(url)
        db.upgrade()
        print(f"loading a synthetic study at scale {scale:g} ...", flush=True)
        _load(db, scale)
        if not db.is_sqlite:  # _load gives its rows explicit ids: move the sequences past them
            with db.engine.begin() as conn:
                for table in ("study", "title", "torrent"):
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
        with db.session() as session:
            key = create_api_key(session, "load test")
            owner = verify_api_key(session, key)
            registry_study = create_study(
                session,
                f"load test registrations {time.time():.0f}",
                owner_key_id=owner.id if owner else None,
            ).id
        db.dispose()
        study_id = 1
        # One loopback client stands for a lab's worth of users: the per-client limits are
        # raised for this server only (the production defaults are in Settings).
        limit = f"{10 * rate:g}"
        env = {
            "SWARMWATCH_API_WRITE_RATE": limit,
            "SWARMWATCH_API_WRITE_BURST": limit,
            "SWARMWATCH_API_READ_RATE": limit,
            "SWARMWATCH_API_READ_BURST": limit,
            "SWARMWATCH_API_ANSWER_CACHE_SECONDS": f"{cache:g}",
        }
        print(
            f"server: uvicorn ({server_flavour()}), {workers} worker(s), "
            f"{url.split(':', 1)[0]}, answer cache {cache:g} s; rate limits raised for this "
            f"run to {limit}/s (burst {limit}) for writes and expensive reads "
            "(production defaults: writes 20/s burst 200, reads 100/s burst 500)",
            flush=True,
        )
        proc, base = serve(url, env, workers)
        try:
            # Every answer of the mix once, as load.lua asks for it: the first computation of
            # a ranking level is a cold read of the rollups (`swarmwatch bench query` times it).
            cold = {path: warm_up(base, path) for path in mix_paths(study_id)}
            print(
                f"first answers (cold, one at a time): slowest {max(cold.values()):.0f} ms "
                f"({max(cold, key=cold.__getitem__)})",
                flush=True,
            )
            args = {kind: [str(study_id)] for kind in MIX_READS}
            args["register"] = [str(registry_study), key, secrets.token_hex(12)]
            # The mix at a quarter of the rate, not counted: with several workers, each
            # process computes its own first answers (the warm-up above reached one).
            warm = run_classes(base, mix_rates(rate / 4), WARM_UP_S, args)
            print(
                f"warm-up (not counted): the mix at {rate / 4:g}/s for {WARM_UP_S} s, "
                f"{sum(r.requests for r in warm.values())} requests, "
                f"errors {sum(r.errors for r in warm.values())}",
                flush=True,
            )
            load_before = os.getloadavg()
            baseline = run_classes(base, {"healthz": rate}, min(seconds, 10), {})["healthz"]
            args["register"] = [str(registry_study), key, secrets.token_hex(12)]
            results = run_classes(base, mix_rates(rate), seconds, args)
            load_after = os.getloadavg()
        finally:
            stop(proc)
    report("baseline /healthz", {"healthz": baseline}, min(seconds, 10), None)
    report("mix", results, seconds, baseline)
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f} on {os.cpu_count()} CPUs (the generator shares them)"
    )
    achieved = sum(r.achieved_rps for r in results.values())
    figures: dict[str, float] = {
        "target_rps": rate,
        "achieved_rps": achieved,
        "requests": float(sum(r.requests for r in results.values())),
        "errors": float(sum(r.errors for r in results.values())),
        "rate_held": float(achieved >= RATE_HELD * rate),
        "baseline_healthz_p50_ms": baseline.p50_ms,
        "baseline_healthz_p95_ms": baseline.p95_ms,
        "baseline_errors": float(baseline.errors),
        "loadavg_1min": load_after[0],
    }
    for kind, r in results.items():
        for name in ("p50_ms", "p95_ms", "p99_ms"):
            figures[f"{kind}_{name}"] = getattr(r, name)
        figures[f"{kind}_errors"] = float(r.errors)
        figures[f"{kind}_rps"] = r.achieved_rps
    if not figures["rate_held"]:
        print(f"FAILED to hold the rate: {achieved:.0f}/s of {rate:g}/s")
    return figures


def main(argv: list[str]) -> int:
    """`python -m bench.load rate=300 seconds=15`: exit 1 on any error or missed rate."""
    options: dict[str, Any] = {}
    for item in argv:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"options are key=value, got {item!r}")
        options[name] = raw
    figures = run_benchmark(**options)
    return 1 if figures["errors"] or not figures["rate_held"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
