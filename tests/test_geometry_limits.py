"""POST /api/v1/geometry/h3 needs no key, so one client must not tie up the server:
a per-client cell budget (429 with Retry-After), answers kept for reuse, a size cap."""

from __future__ import annotations

import h3
import httpx

from swarmwatch.api import create_app
from swarmwatch.api.costly import KeptAnswers, WorkBudget
from swarmwatch.api.routes.web import MAX_GEOMETRY_CELLS
from swarmwatch.config import get_settings
from swarmwatch.store import Database
from tests.conftest import LiveServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_work_budget_is_per_client_and_refills() -> None:
    clock = FakeClock()
    budget = WorkBudget(rate=10, burst=100, clock=clock)
    assert budget.charge("a", 100) == 0
    assert budget.charge("a", 50) == 5.0  # 50 cells at 10 per second
    assert budget.charge("b", 100) == 0  # another client has its own budget
    clock.now = 5.0
    assert budget.charge("a", 50) == 0


def test_kept_answers_expire_and_stay_within_their_bytes() -> None:
    clock = FakeClock()
    kept = KeptAnswers(max_bytes=10, ttl=60, clock=clock)
    kept.put(b"a", b"12345")
    kept.put(b"b", b"12345")
    assert kept.get(b"a") == b"12345"  # a is now the most recently used
    kept.put(b"c", b"123")  # over 10 bytes: b (least recently used) goes
    assert kept.get(b"b") is None and kept.get(b"a") == b"12345"
    kept.put(b"huge", b"x" * 11)  # larger than the whole cache: not kept
    assert kept.get(b"huge") is None
    clock.now = 61
    assert kept.get(b"a") is None


def cells(n: int, res: int = 5) -> list[str]:
    ring = h3.grid_disk(h3.latlng_to_cell(48.85, 2.35, res), 10)
    return sorted(ring)[:n]


def test_outline_budget_refuses_with_429_and_kept_answers_are_free(db: Database) -> None:
    settings = get_settings().model_copy(
        update={"api_geometry_cells_rate": 0.001, "api_geometry_cells_burst": 10}
    )
    app = create_app(settings, db)
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
        first = client.post("/api/v1/geometry/h3", json={"cells": cells(8)})
        assert first.status_code == 200 and len(first.json()["features"]) == 8
        # The same question again is answered from the kept answer: no budget spent.
        assert first.headers["content-encoding"] == "gzip"  # kept compressed as well
        for _ in range(3):
            again = client.post("/api/v1/geometry/h3", json={"cells": cells(8)[::-1]})
            assert again.status_code == 200 and again.content == first.content
        plain = client.post(
            "/api/v1/geometry/h3",
            json={"cells": cells(8)},
            headers={"Accept-Encoding": "identity"},
        )
        assert "content-encoding" not in plain.headers and plain.content == first.content
        other = client.post("/api/v1/geometry/h3", json={"cells": cells(9)})
        assert other.status_code == 429, other.text
        assert other.json()["detail"].startswith("outline budget spent")
        assert int(other.headers["retry-after"]) >= 1


def test_outline_requests_are_capped(db: Database) -> None:
    app = create_app(get_settings(), db)
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as client:
        too_many = ["85283473fffffff"] * (MAX_GEOMETRY_CELLS + 1)
        r = client.post("/api/v1/geometry/h3", json={"cells": too_many})
        assert r.status_code == 422 and r.json()["detail"]
