"""A short-lived cache of whole analysis answers (rankings, frames, summary, exports).

Many viewers of one map or ranking ask for the same URL; each answer already comes
from rollups and cached levels that may lag ingest by seconds (analysis.versioned),
so reusing the finished bytes for about a second costs no freshness worth having and
saves the session, the queries, the serialisation and the compression per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: GET paths under /api/ whose answers are cached: the whole-study reads.
CACHED_SUFFIXES = (
    "/summary",
    "/rankings",
    "/rankings.json",
    "/frames",
    "/cells.geojson",
    "/cities.geojson",
)
#: An expired answer is served while a background request recomputes it, but never
#: longer than this past its time to live (then a request computes it, as with no cache).
STALE_GRACE_S = 5.0
#: Answers that make a kept answer for the same key wrong, not just unavailable: the
#: key was revoked (401), the study made private (403) or deleted (404, 410). The
#: kept answer is dropped at once, or it would be served on through the stale grace
#: (5 s). A 429 or a 5xx leaves it: the data it holds is still theirs to read.
FORGETTING_STATUSES = frozenset({401, 403, 404, 410})
#: Answers larger than this are passed through, never kept (full-scale frames, exports).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: All kept answers together, at most: the least recently used are dropped first.
MAX_TOTAL_BYTES = 64 * 1024 * 1024
#: How long a request waits for an identical one already computing, before computing too.
COALESCE_WAIT_S = 30.0


@dataclass(slots=True)
class Answer:
    headers: list[tuple[bytes, bytes]]  # as sent, including content-length and etag
    body: bytes
    etag: bytes
    stored: float  # monotonic clock

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers)


class AnswerCache:
    """ASGI middleware: reuse 200 answers of analysis GETs for `ttl` seconds; ETag and 304.

    The key is the path, the query string, whether gzip is accepted and a hash of the
    Authorization header: an answer is reused only for the same credentials (or
    none), so a private study's answer never reaches a caller without a key, and a
    wrong key is still refused by the application. The price of reuse: a key revoked,
    or a study made private, takes effect for this cache within ttl + STALE_GRACE_S.
    Concurrent misses of one key are computed once (the others wait for it), and an
    expired answer is served while a background request recomputes it, so no burst of
    readers ever recomputes the same answer in parallel or waits for it. ttl <= 0
    turns caching off (ETags and 304 stay).
    """

    def __init__(
        self,
        app: Any,
        *,
        ttl: float,
        max_total_bytes: int = MAX_TOTAL_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.ttl = ttl
        self.max_total_bytes = max_total_bytes
        self.clock = clock
        self.answers: OrderedDict[tuple[Any, ...], Answer] = OrderedDict()
        self.total_bytes = 0
        self.computing: dict[tuple[Any, ...], asyncio.Event] = {}
        self.refreshes: set[asyncio.Task[None]] = set()
        self.hits = self.misses = 0

    def _key(self, scope: Any) -> tuple[Any, ...] | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        if not (path.startswith("/api/") and path.endswith(CACHED_SUFFIXES)):
            return None
        gzip = auth = b""
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                gzip = b"gzip" if b"gzip" in value else b""
            elif name == b"authorization":
                auth = hashlib.blake2b(value, digest_size=16).digest()
        return (path, scope.get("query_string", b""), gzip, auth)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        if self.ttl > 0:
            answer = await self._reusable(key, scope)
            if answer is not None:
                self.hits += 1
                await self._send(scope, send, answer, hit=True)
                return
        self.misses += 1
        await self._compute(key, scope, receive, send)

    async def _reusable(self, key: tuple[Any, ...], scope: Any) -> Answer | None:
        """A kept answer fit to send now, after waiting for an identical request if need be.

        An expired answer is still sent for STALE_GRACE_S while a background request
        recomputes it (RFC 5861's stale-while-revalidate), so readers never queue
        behind a recomputation, and its cost is paid once, off their path.
        """
        answer = self.answers.get(key)
        if answer is not None:
            age = self.clock() - answer.stored
            if age < self.ttl:
                self.answers.move_to_end(key)
                return answer
            if age < self.ttl + STALE_GRACE_S:
                if key not in self.computing:
                    self._refresh_later(key, scope)
                return answer
        waiting = self.computing.get(key)
        if waiting is None:
            return None
        try:
            await asyncio.wait_for(waiting.wait(), COALESCE_WAIT_S)
        except TimeoutError:
            return None
        answer = self.answers.get(key)
        if answer is not None and self.clock() - answer.stored < self.ttl + STALE_GRACE_S:
            return answer
        return None  # it failed or was not cacheable: compute like any miss

    def _refresh_later(self, key: tuple[Any, ...], scope: Any) -> None:
        """Recompute an answer as this request would, with its credentials, answering no one."""
        headers = [(k, v) for k, v in scope["headers"] if k != b"if-none-match"]
        own_scope = {**scope, "headers": headers}
        asked = False
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # a client that stays connected until the answer is done
            return {"type": "http.disconnect"}

        async def discard(message: Any) -> None:
            pass

        done = self.computing[key] = asyncio.Event()  # now, not when the task first runs

        async def refresh() -> None:
            try:
                await self._run(key, own_scope, receive, discard)
            except Exception as exc:  # the kept answer ages out; a later request retries
                log.warning(
                    "background refresh of %s failed: %s", scope["path"], type(exc).__name__
                )
            finally:
                if self.computing.get(key) is done:
                    del self.computing[key]
                done.set()

        task = asyncio.create_task(refresh())
        self.refreshes.add(task)
        task.add_done_callback(self.refreshes.discard)

    async def _compute(self, key: tuple[Any, ...], scope: Any, receive: Any, send: Any) -> None:
        """Run the application, buffering a 200 answer to keep it and give it an ETag.

        Concurrent requests for the same key wait for this one (see _reusable).
        """
        done = self.computing.setdefault(key, asyncio.Event())
        try:
            await self._run(key, scope, receive, send)
        finally:
            if self.computing.get(key) is done:
                del self.computing[key]
            done.set()

    async def _run(self, key: tuple[Any, ...], scope: Any, receive: Any, send: Any) -> None:
        began = self.clock()  # the answer is as old as the data it read, not its last byte
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []
        size = 0
        passing = False  # sending through unbuffered: not a 200, or too large to keep

        async def capture(message: Any) -> None:
            nonlocal start, size, passing
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if message["status"] != 200:
                    passing = True
                    if message["status"] in FORGETTING_STATUSES:
                        self._forget(key)
                    await send(message)
                    return
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            if size > MAX_ANSWER_BYTES:  # too large to keep: send what we have and pass on
                passing = True
                await send(start)
                more = message.get("more_body", False)
                await send(
                    {"type": "http.response.body", "body": b"".join(chunks), "more_body": more}
                )
                chunks.clear()
                return
            if message.get("more_body", False):
                return
            whole = b"".join(chunks)
            etag = b'"' + hashlib.blake2b(whole, digest_size=16).hexdigest().encode() + b'"'
            headers = [
                (k, v) for k, v in start.get("headers", []) if k not in (b"content-length", b"etag")
            ]
            headers += [(b"content-length", str(len(whole)).encode()), (b"etag", etag)]
            answer = Answer(headers, whole, etag, began)
            if self.ttl > 0:
                self._keep(key, answer)
            await self._send(scope, send, answer, hit=False)

        await self.app(scope, receive, capture)

    def _forget(self, key: tuple[Any, ...]) -> None:
        old = self.answers.pop(key, None)
        if old is not None:
            self.total_bytes -= old.size

    def _keep(self, key: tuple[Any, ...], answer: Answer) -> None:
        old = self.answers.pop(key, None)
        if old is not None:
            self.total_bytes -= old.size
        self.answers[key] = answer
        self.total_bytes += answer.size
        while self.total_bytes > self.max_total_bytes and self.answers:
            _, dropped = self.answers.popitem(last=False)
            self.total_bytes -= dropped.size

    async def _send(self, scope: Any, send: Any, answer: Answer, *, hit: bool) -> None:
        cache = (b"x-cache", b"hit" if hit else b"miss")
        if _matches(scope, answer.etag):
            kept = [(k, v) for k, v in answer.headers if k in (b"etag", b"vary")]
            await send({"type": "http.response.start", "status": 304, "headers": [*kept, cache]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*answer.headers, cache]}
        )
        await send({"type": "http.response.body", "body": answer.body})


def _matches(scope: Any, etag: bytes) -> bool:
    """If-None-Match names this ETag (or *): the client's copy is current (RFC 9110 13.1.2)."""
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            tags = [t.strip().removeprefix(b"W/") for t in value.split(b",")]
            return etag in tags or b"*" in tags
    return False
