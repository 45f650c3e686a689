"""Published frames kept in the database across server starts, by question and version.

A fresh server's first time-lapse used to compute every frame from the rollups (seconds
at alpha60's scale: each frame's cells through suppression, its top cities and metros).
Closed frames never change, so the frames a server computed are kept (store.models.
FrameAnswer) and the next server reads them back in one query. A kept frame is used only
if its version still matches: the frame's counts and record-key sums (its rollup_active
row: every newly counted peer raises them), the place tables' fingerprint (a `places
load` changes names and metros) and FRAME_ANSWER_FORMAT (bumped whenever the published
form of a frame changes). Storage, not analysis: the app makes the object and hands it
to analysis with its caches (AnalysisCaches.persisted), which gives it what it
published; a failed save costs only a recomputation at the next start.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select

from swarmwatch.store.models import City, FrameAnswer, Metro

log = logging.getLogger(__name__)

#: The layout and meaning of a kept frame; a new number makes every kept frame stale.
FRAME_ANSWER_FORMAT = 1
#: The bucket a question's whole compact time-lapse is kept under (gzipped), beside its frames.
COMPACT_BUCKET = -1
#: The newest frames of a question, which still change: kept too (a new server serves
#: them as they were, marked stale, while it recomputes them), rewritten at each refresh.
OPEN_FRAMES = 2


class Kept(NamedTuple):
    """A kept frame: its version, its body (Frame.to_bytes) and when its data was read."""

    version: bytes
    body: bytes
    read_at: datetime


def _digest(value: object) -> bytes:
    return hashlib.blake2b(repr(value).encode(), digest_size=16, person=b"sw-frame-ans").digest()


class PersistedFrames:
    """Kept frames of one database engine's questions (see the module docstring)."""

    def __init__(self) -> None:
        self._fingerprints: dict[int, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def fingerprint(self, conn: Connection) -> tuple[int, ...]:
        """The place tables as frames read them, once per engine and process (a running
        server keeps its places until a restart, as its in-memory caches do)."""
        engine_id = id(conn.engine)
        with self._lock:
            known = self._fingerprints.get(engine_id)
        if known is None:
            cities = conn.execute(select(func.count()).select_from(City)).scalar_one()
            metros, people = conn.execute(
                select(func.count(), func.coalesce(func.sum(Metro.population), 0))
            ).one()
            known = (int(cities), int(metros), int(people))
            with self._lock:
                self._fingerprints[engine_id] = known
        return known

    @staticmethod
    def question(key: Hashable) -> bytes:
        return _digest((FRAME_ANSWER_FORMAT, key))

    def version(self, conn: Connection, counts: Sequence[int]) -> bytes:
        return _digest((tuple(counts), self.fingerprint(conn)))

    def answer_version(self, conn: Connection, served: Sequence[tuple[int, Hashable]]) -> bytes:
        """The version of a set of served frames: (bucket, version) each, and the places."""
        return _digest((tuple(served), self.fingerprint(conn)))

    def load(self, conn: Connection, question: bytes) -> dict[int, Kept]:
        """bucket -> the question's kept frame."""
        rows = conn.execute(
            select(
                FrameAnswer.bucket, FrameAnswer.version, FrameAnswer.body, FrameAnswer.read_at
            ).where(FrameAnswer.question == question)
        ).all()
        return {int(b): Kept(bytes(v), bytes(body), read_at) for b, v, body, read_at in rows}

    def save(
        self, engine: Engine, study_id: int, question: bytes, frames: Sequence[tuple[int, Kept]]
    ) -> None:
        """Keep (bucket, frame) pairs of a study's question, replacing older versions, in
        a transaction of its own (they go when the study is deleted)."""
        if not frames:
            return
        try:
            with engine.begin() as conn:
                buckets: object = bindparam("buckets", [b for b, _ in frames], expanding=True)
                conn.execute(
                    delete(FrameAnswer).where(
                        FrameAnswer.question == question,
                        FrameAnswer.bucket.in_(buckets),  # type: ignore[arg-type]
                    )
                )
                conn.execute(
                    insert(FrameAnswer),
                    [
                        {
                            "question": question,
                            "bucket": b,
                            "study_id": study_id,
                            "version": kept.version,
                            "body": kept.body,
                            "read_at": kept.read_at,
                        }
                        for b, kept in frames
                    ],
                )
        except Exception:  # only a cost: the next start computes these frames again
            log.warning("keeping %d computed frames failed", len(frames), exc_info=True)


__all__ = ["COMPACT_BUCKET", "FRAME_ANSWER_FORMAT", "OPEN_FRAMES", "Kept", "PersistedFrames"]
