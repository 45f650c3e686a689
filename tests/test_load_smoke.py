"""The load generator (wrk + load.lua), briefly and gently, against a live server.

Production rate limits stay on here: 20 requests/s for 2 s is inside every bucket.
"""

from __future__ import annotations

import secrets
import shutil

import httpx
import pytest

from bench.load import mix_paths, mix_rates, parse_wrk, run_classes, warm_up


def test_wrk_is_installed() -> None:
    assert shutil.which("wrk"), "the Debian package wrk is needed (scripts/test.sh installs it)"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_load_generator_at_a_low_rate_sees_no_errors(live_server: str, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    study = httpx.post(
        f"{live_server}/api/v1/studies", json={"name": "load smoke"}, headers=headers, timeout=30
    )
    assert study.status_code == 201, study.text
    study_id = str(study.json()["id"])
    args = {kind: [study_id] for kind in ("rankings", "frames", "summary")}
    args["register"] = [study_id, api_key, secrets.token_hex(12)]
    # Each read answered once first, however long that takes: a class counts only the
    # answers back within its 2 s, and a cold first answer on a loaded machine can take
    # longer (session 6, loop run B2: summary, 0 requests in 2.03 s).
    for path in mix_paths(int(study_id)):
        warm_up(live_server, path)
    results = run_classes(live_server, mix_rates(20), 2, args)
    assert set(results) == {"rankings", "frames", "summary", "register"}
    for kind, result in results.items():
        assert result.requests > 0, kind
        assert result.errors == 0, (kind, result.statuses, result.socket_errors)
    registered = httpx.get(
        f"{live_server}/api/v1/torrents", params={"study_id": study_id}, timeout=30
    ).json()["total"]
    # wrk stops at its deadline with some requests sent but unanswered: those may be stored.
    assert registered >= results["register"].statuses["201"]


def test_wrong_statuses_and_socket_errors_count_as_errors() -> None:
    line = (
        'SWARMWATCH-LOAD {"kind": "register", "requests": 10, "duration_s": 1.0, '
        '"statuses": {"201": 7, "429": 2, "503": 1}, "cache_hits": 0, "connect": 0, '
        '"read": 1, "write": 0, "timeout": 2, "p50_ms": 1.0, "p95_ms": 2.0, '
        '"p99_ms": 3.0, "max_ms": 4.0}'
    )
    result = parse_wrk("Running 1s test\n" + line + "\n", 10)
    assert result.errors == 2 + 1 + 1 + 2
    assert result.achieved_rps == 10
