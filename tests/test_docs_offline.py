"""/docs works with no network: Swagger UI from this server, checked in headless Chromium."""

from __future__ import annotations

import httpx
import pytest

from tests.web_browser import chromium


@pytest.mark.slow
def test_docs_render_every_operation_offline(live_server: str) -> None:
    document = httpx.get(f"{live_server}/openapi.json").json()
    # Swagger UI draws an operation once under each of its tags.
    operations = sum(
        max(1, len(operation.get("tags", ())))
        for methods in document["paths"].values()
        for operation in methods.values()
    )
    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/docs")
        # Swagger UI has read the whole document when every operation is drawn (it draws
        # them tag by tag: counting at the first one raced the rest).
        page.wait_for_function(
            f"document.querySelectorAll('.opblock').length === {operations}", timeout=60_000
        )
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
