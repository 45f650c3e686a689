"""Response headers that echo client text stay sendable (uvicorn drops the connection
on a control character in a header value)."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.db
@pytest.mark.parametrize("path", ["rankings", "rankings.csv", "cities.geojson"])
def test_a_study_name_with_control_characters_is_answered(
    live_server: str, api_key: str, path: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    created = httpx.post(
        f"{live_server}/api/v1/studies",
        json={"name": "bell\x07 and\x01 tab\t"},
        headers=auth,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    resp = httpx.get(f"{live_server}/api/v1/studies/{created.json()['id']}/{path}", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-swarmwatch-study"].endswith("bell? and? tab")
