"""The load generator, briefly and gently, against a live server: it finishes and sees no errors."""

from __future__ import annotations

import asyncio
import random

import httpx

from swarmwatch.bench.load import drive, request_mix


def test_load_generator_at_a_low_rate_sees_no_errors(live_server: str, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    study = httpx.post(
        f"{live_server}/api/v1/studies", json={"name": "load smoke"}, headers=headers, timeout=30
    )
    assert study.status_code == 201, study.text
    study_id = study.json()["id"]
    rng = random.Random(2)
    lines: list[str] = []
    latencies, errors, _elapsed = asyncio.run(
        drive(
            live_server,
            api_key,
            rate=20,
            seconds=1.5,
            make=lambda: request_mix(study_id, study_id, rng),
            progress=lines.append,
        )
    )
    assert sum(len(v) for v in latencies.values()) == 30
    assert dict(errors) == {}
    assert {"rankings", "frames"} <= set(latencies)
