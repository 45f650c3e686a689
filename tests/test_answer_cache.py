"""The answer cache: reuse within its time to live, stale-while-revalidate, ETag/304,
credentials in the key, and what it never keeps. Unit tests over a counting ASGI app
with an injected clock, plus the access rules through a live server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from swarmwatch.api.answercache import MAX_ANSWER_BYTES, STALE_GRACE_S, AnswerCache

PATH = "/api/v1/studies/1/rankings"


class CountingApp:
    """Answers `status` with a body naming how often it was called."""

    def __init__(
        self, status: int = 200, size: int = 0, chunks: int = 1, same: bool = False
    ) -> None:
        self.calls = 0
        self.status, self.size, self.chunks, self.same = status, size, chunks, same

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        text = "same answer" if self.same else f"answer {self.calls}"
        body = text.encode().ljust(self.size, b" ")
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        step = max(1, len(body) // self.chunks)
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": not last})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def get(
    app: Any, path: str = PATH, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"level=city",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_answer_is_reused_within_its_time_to_live() -> None:
    async def scenario() -> None:
        app, clock = CountingApp(), Clock()
        cache = AnswerCache(app, ttl=1.0, clock=clock)
        first = await get(cache)
        clock.now += 0.5
        second = await get(cache)
        assert app.calls == 1
        assert first[2] == second[2] == b"answer 1"
        assert first[1][b"x-cache"] == b"miss" and second[1][b"x-cache"] == b"hit"
        assert first[1][b"etag"] == second[1][b"etag"]
        assert second[1][b"content-length"] == b"8"

    run(scenario())


def test_an_expired_answer_is_served_while_it_is_recomputed_in_the_background() -> None:
    async def scenario() -> None:
        app, clock = CountingApp(), Clock()
        cache = AnswerCache(app, ttl=1.0, clock=clock)
        await get(cache)
        clock.now += 1.5
        stale = await get(cache)
        assert stale[2] == b"answer 1"  # no reader waits for the recomputation
        await asyncio.gather(*cache.refreshes)
        assert app.calls == 2
        fresh = await get(cache)
        assert fresh[2] == b"answer 2" and fresh[1][b"x-cache"] == b"hit"

    run(scenario())


@pytest.mark.parametrize(
    ("status", "kept"),
    [(401, False), (403, False), (404, False), (410, False), (429, True), (500, True), (503, True)],
)
def test_a_recomputation_refused_drops_the_kept_answer(status: int, kept: bool) -> None:
    """A revoked key, or a study made private or deleted: once a recomputation is
    refused, the kept answer goes, instead of being served through the stale grace.
    A passing failure (429, 5xx) leaves it: the data is still the reader's to see."""

    async def scenario() -> None:
        app, clock = CountingApp(), Clock()
        cache = AnswerCache(app, ttl=1.0, clock=clock)
        await get(cache, headers={"Authorization": "Bearer k"})
        app.status = status  # the key is revoked, say
        clock.now += 1.5
        await get(cache, headers={"Authorization": "Bearer k"})  # stale, recomputing
        await asyncio.gather(*cache.refreshes)
        after = await get(cache, headers={"Authorization": "Bearer k"})
        if kept:
            assert after[0] == 200 and after[2] == b"answer 1"  # still within the grace
        else:
            assert after[0] == status
            assert not cache.answers and cache.total_bytes == 0

    run(scenario())


def test_past_the_grace_period_a_request_computes_the_answer_itself() -> None:
    async def scenario() -> None:
        app, clock = CountingApp(), Clock()
        cache = AnswerCache(app, ttl=1.0, clock=clock)
        await get(cache)
        clock.now += 1.0 + STALE_GRACE_S + 0.1
        answer = await get(cache)
        assert answer[2] == b"answer 2" and answer[1][b"x-cache"] == b"miss"
        assert not cache.refreshes

    run(scenario())


def test_concurrent_misses_compute_once() -> None:
    class SlowApp(CountingApp):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(0.05)
            await super().__call__(scope, receive, send)

    async def scenario() -> None:
        app = SlowApp()
        cache = AnswerCache(app, ttl=1.0)
        answers = await asyncio.gather(*(get(cache) for _ in range(5)))
        assert app.calls == 1
        assert {a[2] for a in answers} == {b"answer 1"}

    run(scenario())


def test_credentials_are_part_of_the_key() -> None:
    async def scenario() -> None:
        app = CountingApp()
        cache = AnswerCache(app, ttl=1.0)
        await get(cache, headers={"Authorization": "Bearer a"})
        await get(cache, headers={"Authorization": "Bearer b"})
        await get(cache)
        await get(cache, headers={"Authorization": "Bearer a"})
        assert app.calls == 3

    run(scenario())


def test_gzip_and_identity_answers_are_kept_apart() -> None:
    async def scenario() -> None:
        app = CountingApp()
        cache = AnswerCache(app, ttl=1.0)
        await get(cache, headers={"Accept-Encoding": "gzip, deflate"})
        await get(cache)
        await get(cache, headers={"Accept-Encoding": "gzip"})
        assert app.calls == 2

    run(scenario())


def test_if_none_match_gets_304_without_a_body() -> None:
    async def scenario() -> None:
        for ttl in (1.0, 0.0):  # with the cache off, ETags and 304 still work
            app = CountingApp(same=True)
            cache = AnswerCache(app, ttl=ttl)
            status, headers, _ = await get(cache)
            etag = headers[b"etag"].decode()
            status, headers, body = await get(cache, headers={"If-None-Match": f'W/"x", {etag}'})
            assert (status, body) == (304, b"")
            assert headers[b"etag"] == etag.encode()
            assert app.calls == (1 if ttl else 2)

    run(scenario())


def test_with_ttl_zero_nothing_is_kept() -> None:
    async def scenario() -> None:
        app = CountingApp()
        cache = AnswerCache(app, ttl=0.0)
        assert (await get(cache))[2] == b"answer 1"
        assert (await get(cache))[2] == b"answer 2"
        assert not cache.answers

    run(scenario())


@pytest.mark.parametrize("status", [201, 304, 401, 403, 404, 422, 429, 500, 503])
def test_only_200_answers_are_kept(status: int) -> None:
    async def scenario() -> None:
        app = CountingApp(status=status)
        cache = AnswerCache(app, ttl=1.0)
        first = await get(cache)
        await get(cache)
        assert first[0] == status
        assert app.calls == 2
        assert not cache.answers

    run(scenario())


def test_other_paths_and_methods_pass_through() -> None:
    async def scenario() -> None:
        app = CountingApp()
        cache = AnswerCache(app, ttl=1.0)
        for path, method in (
            ("/api/v1/torrents", "GET"),
            ("/api/v1/studies/1/rankings.csv", "GET"),  # a streamed export, however large
            ("/healthz", "GET"),
            (PATH, "POST"),
            (PATH, "HEAD"),
        ):
            _, headers, _ = await get(cache, path=path, method=method)
            assert b"x-cache" not in headers and b"etag" not in headers
        assert app.calls == 5

    run(scenario())


def test_a_large_answer_streams_through_and_is_not_kept() -> None:
    async def scenario() -> None:
        app = CountingApp(size=MAX_ANSWER_BYTES + 10, chunks=4)
        cache = AnswerCache(app, ttl=1.0)
        status, headers, body = await get(cache)
        assert status == 200 and len(body) == MAX_ANSWER_BYTES + 10
        assert b"etag" not in headers
        await get(cache)
        assert app.calls == 2 and not cache.answers

    run(scenario())


def test_memory_is_bounded_least_recently_used_first() -> None:
    async def scenario() -> None:
        app = CountingApp(size=1000)
        cache = AnswerCache(app, ttl=60.0, max_total_bytes=3500)
        for n in range(5):
            await get(cache, path=f"/api/v1/studies/{n}/summary")
        assert cache.total_bytes <= 3500
        assert len(cache.answers) == 3
        assert sum(a.size for a in cache.answers.values()) == cache.total_bytes

    run(scenario())


@pytest.mark.db
def test_a_private_answer_cached_for_a_key_is_refused_without_one(
    live_server: str, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    study = httpx.post(
        f"{live_server}/api/v1/studies",
        json={"name": "private cache", "private": True},
        headers=auth,
        timeout=30,
    ).json()
    url = f"{live_server}/api/v1/studies/{study['id']}/summary"
    with httpx.Client(timeout=30) as client:
        keyed = client.get(url, headers=auth)
        assert keyed.status_code == 200, keyed.text
        again = client.get(url, headers=auth)
        assert again.headers["x-cache"] == "hit"
        assert client.get(url).status_code == 404  # private: unknown to the anonymous
        wrong = client.get(url, headers={"Authorization": "Bearer sw_not-a-key"})
        assert wrong.status_code == 403
        revalidated = client.get(url, headers={**auth, "If-None-Match": keyed.headers["etag"]})
        assert revalidated.status_code == 304 and revalidated.content == b""
