"""/docs works with no network: Swagger UI from this server, checked in headless Chromium."""

from __future__ import annotations

import httpx
import pytest

from tests.web_browser import chromium


@pytest.mark.slow
def test_docs_render_every_operation_offline(live_server: str) -> None:
    operations = sum(
        len(methods)
        for methods in httpx.get(f"{live_server}/openapi.json").json()["paths"].values()
    )
    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/docs")
        # Swagger UI has read the document when its operations are drawn.
        page.wait_for_selector(".opblock", timeout=60_000)
        assert page.locator(".opblock").count() == operations
        assert "swarmwatch" in page.locator(".info .title").inner_text()
        # Nothing but this server was asked (CDNs, the online validator, fonts) ...
        assert browser.foreign_requests(live_server.split("//", 1)[1]) == []
        assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in browser.requests)
        assert browser.console_errors == []


def test_docs_page_names_no_other_host(live_server: str) -> None:
    page = httpx.get(f"{live_server}/docs")
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        got = httpx.get(f"{live_server}/docs/assets/{asset}")
        assert got.status_code == 200 and kind in got.headers["content-type"]
    missing = httpx.get(f"{live_server}/docs/assets/..%2Fcore.py")
    assert missing.status_code == 404 and missing.json()["detail"]
    assert httpx.get(f"{live_server}/redoc").status_code == 404
