"""Sightings by source and by vantage: each cell's noise is keyed by exactly the peers it saw.

Issue 15's closing notes (gap 2): a source's record-key sum held only the keys of the
peers new to the title there, so a source (or vantage) that reached peers after another
one had a sum that missed them, and its noise was not the noise of its own peers. Now
the writer adds a peer's key to a source's (vantage's) cell once, when the peer first
reaches it, so the same peers always give the same noise, however they got there.
"""

from __future__ import annotations

import random
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from swarmwatch.analysis.scope import resolve_scope
from swarmwatch.analysis.summary import compute_summary
from swarmwatch.store import Database, writer
from swarmwatch.store.batch import SightingRow
from swarmwatch.store.models import Peer, Study, Title, Torrent
from swarmwatch.store.rollups import rollup_activity
from swarmwatch.store.writer import BatchWriter, WriteBatch

T0 = datetime(2026, 11, 27, 10, tzinfo=UTC)
PEERS = [bytes([n]) * 16 for n in range(1, 9)]  # 8 peers: above k, in every cell


def _study(db: Database, study_id: int) -> None:
    with db.session() as s:
        s.add(Study(id=study_id, name=f"s{study_id}", k_threshold=5))
        s.flush()
        s.add(Title(id=study_id, study_id=study_id, name="t"))
        s.flush()
        s.add(Torrent(id=study_id, study_id=study_id, title_id=study_id, infohash_v1="a" * 40))


def _write(db: Database, study_id: int, source: str, vantage: str, hours: int) -> None:
    batch = WriteBatch()
    for peer in PEERS:
        batch.sightings.append(
            SightingRow(study_id, study_id, study_id, peer, T0 + timedelta(hours=hours),
                        source, vantage, None, "GB", 2643743, None, None, None)
        )  # fmt: skip
    BatchWriter(db.engine).write(batch)


def _public(db: Database, study_id: int) -> dict[str, Any]:
    with db.engine.connect() as conn:
        study = conn.execute(select(Study.__table__).where(Study.id == study_id)).one()
        return compute_summary(conn, resolve_scope(conn, study, exact=False))


def _sum(db: Database, column: Any, where: Any) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(column), 0)).where(where)).one()[0])


def test_a_source_reached_second_gets_the_noise_of_its_own_peers(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same record keys in both studies (one seed each), drawn in peer-key order.
    monkeypatch.setattr(
        writer, "draw_record_keys", lambda n: array("l", random.Random(7).sample(range(4096), n))
    )
    _study(db, 1)  # the peers via the tracker at vantage va, then via the DHT at vb
    _write(db, 1, "tracker", "va", 0)
    _write(db, 1, "dht", "vb", 1)
    _study(db, 2)  # a fresh study with the same peers, via the DHT at vb only
    _write(db, 2, "dht", "vb", 1)

    act = rollup_activity.c
    with db.engine.connect() as conn:
        keys = sum(conn.execute(select(Peer.record_key).where(Peer.title_id == 1)).scalars())
    assert keys > 0
    for study_id in (1, 2):
        mine = act.title_id == study_id
        # Each cell's sum is the sum over exactly the peers it counts.
        assert _sum(db, act.source_rk, mine & (act.source == "dht")) == keys
        assert _sum(db, act.vantage_rk, mine & (act.vantage == "vb")) == keys
    assert _sum(db, act.source_rk, (act.title_id == 1) & (act.source == "tracker")) == keys
    assert _sum(db, act.vantage_rk, (act.title_id == 1) & (act.vantage == "va")) == keys

    first, fresh = _public(db, 1), _public(db, 2)
    assert first["sightings_by_source"]["dht"] == fresh["sightings_by_source"]["dht"]
    assert first["sightings_by_vantage"]["vb"] == fresh["sightings_by_vantage"]["vb"]
    # A third sighting round adds sightings, not keys: a peer is in a cell once.
    _write(db, 1, "dht", "vb", 2)
    assert _sum(db, act.source_rk, (act.title_id == 1) & (act.source == "dht")) == keys
