"""The pipeline into a real database: places, peers, anomalies, seals, samples, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from swarmwatch.config import get_settings
from swarmwatch.custody import KeyCustody
from swarmwatch.pipeline.anonymise import StudySealed, ensure_study_key, seal_study
from swarmwatch.pipeline.binning import cell_for
from swarmwatch.pipeline.geolocate import Geolocator, address_key
from swarmwatch.pipeline.pipeline import Pipeline, PipelineClosed
from swarmwatch.pipeline.places import load_places
from swarmwatch.sightings import PeerSighting, SampleRecord, Source
from swarmwatch.store import Database
from swarmwatch.store.models import Anomaly, Peer, Sample, Tracker
from swarmwatch.store.writer import sources_of
from tests.pipeline_fixtures import INFOHASH, INFOHASH_B, KNOWN, T0, addr, register, write_city_db


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def sighting(
    ip: str, *, at: int = 0, source: Source = Source.TRACKER, ih: str = INFOHASH
) -> PeerSighting:
    return PeerSighting(ih, addr(ip), 51413, source, "v1", T0 + timedelta(seconds=at))


async def run(db: Database, city_db: Path, items: list[PeerSighting], **kw: object) -> Pipeline:
    geo = Geolocator(
        city_db,
        workers=int(kw.pop("workers", 0)),  # type: ignore[call-overload]
        ranges=bool(kw.pop("ranges", True)),
    )
    try:
        async with Pipeline(db, geolocator=geo, batch_size=7, **kw) as p:  # type: ignore[arg-type]
            for s in items:
                await p.put(s)
        return p
    finally:
        geo.close()


def test_known_addresses_are_placed_and_anomalies_counted(db: Database, city_db: Path) -> None:
    load_places(db)
    ids = register(db, ("alpha", [INFOHASH]))
    items = [sighting(k.address) for k in KNOWN] + [
        sighting(k.address, source=Source.DHT) for k in KNOWN
    ]
    p = asyncio.run(run(db, city_db, items))
    assert p.stats.stored == 2 * len(KNOWN) and p.stats.lost == 0
    with db.session() as s:
        london = s.scalars(select(Peer).where(Peer.geoname_id == 2643743)).all()
        # 81.2.69.160 and ::ffff:81.2.69.161, each seen from two sources
        assert len(london) == 2 and [x.sightings for x in london] == [2, 2]
        assert {frozenset(sources_of(x.sources)) for x in london} == {frozenset({"tracker", "dht"})}
        assert {x.metro_id for x in london} == {2643743}
        assert {x.h3_cell for x in london} == {cell_for(51.5142, -0.0931)}
        assert {x.country for x in london} == {"GB"}
        milton = s.scalars(select(Peer).where(Peer.geoname_id == 5803556)).first()
        assert milton is not None and milton.metro_id is not None
        counts = {
            (a.source, a.reason): a.count
            for a in s.scalars(
                select(Anomaly).where(Anomaly.torrent_id == ids[("alpha", INFOHASH)])
            )
        }
        expected: dict[str, int] = {}
        for k in KNOWN:
            if k.anomaly:
                expected[k.anomaly] = expected.get(k.anomaly, 0) + 1
        for source in ("tracker", "dht"):
            assert {r: c for (src, r), c in counts.items() if src == source} == expected
        # Anomalous peers are still peers (alpha60 counted them), with no city.
        assert s.scalar(select(func.count()).select_from(Peer)) == len(KNOWN)
        assert s.scalar(
            select(func.count()).select_from(Peer).where(Peer.geoname_id.is_(None))
        ) == sum(1 for k in KNOWN if k.geoname_id is None)


def test_two_studies_seal_and_unknown_infohash(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]), ("beta", [INFOHASH, INFOHASH_B]))
    with db.session() as s:
        seal_study(s, 2)
        with pytest.raises(StudySealed):
            ensure_study_key(s, 2, KeyCustody.from_settings(get_settings()))
    unknown = "f" * 40
    items = [
        sighting("81.2.69.160"),
        sighting("81.2.69.160", ih=INFOHASH_B),
        sighting("1.2.3.4", ih=unknown),
    ]
    p = asyncio.run(run(db, city_db, items))
    assert p.stats.unknown_infohash == 1
    assert p.stats.sealed == 2  # beta's copy of INFOHASH, and INFOHASH_B
    with db.session() as s:
        rows = s.scalars(select(Peer)).all()
        assert [(r.study_id, r.geoname_id, r.sightings) for r in rows] == [(1, 2643743, 1)]


def test_keys_differ_between_studies_and_repeat_in_one(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]), ("beta", [INFOHASH]))
    items = [sighting("81.2.69.160", at=t) for t in (0, 1, 2, 3, 4, 70, 130)]
    p = asyncio.run(run(db, city_db, items))
    assert p.stats.coalesced == 4  # five within the first minute: the first is kept
    assert p.stats.stored == 2 * 3  # three minutes, each stored for both studies
    with db.session() as s:
        peers = s.scalars(select(Peer).order_by(Peer.study_id)).all()
        assert len(peers) == 2 and peers[0].peer_key != peers[1].peer_key
        assert len(peers[0].peer_key) == 16
        assert peers[0].sightings == 3 and peers[0].first_seen == T0
        assert peers[0].last_seen == T0 + timedelta(seconds=130)
    # Again, in a new pipeline: the same address gets the same key (unique counts hold).
    asyncio.run(run(db, city_db, [sighting("81.2.69.160", at=600)]))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Peer)) == 2


def test_new_peer_reaches_the_rollups(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    seen: list[tuple[bytes, bool]] = []

    def rollups(conn: object, batch: list) -> None:  # type: ignore[type-arg]
        seen.extend((a.peer_key, a.new_peer) for a in batch)

    items = [sighting("81.2.69.160", at=t) for t in (0, 70, 140)] + [
        sighting("89.160.20.112", at=5)
    ]

    async def go() -> None:
        geo = Geolocator(city_db)
        async with Pipeline(db, geolocator=geo, batch_size=2, rollups=rollups) as p:
            for s in items:
                await p.put(s)
                await p.flush()
        geo.close()

    asyncio.run(go())
    assert len(seen) == 4
    assert sum(new for _, new in seen) == 2  # one per distinct peer, on its first sighting
    assert seen[0][1] is True and seen[1][1] is False


def test_samples_update_the_tracker(db: Database, city_db: Path) -> None:
    ids = register(db, ("alpha", [INFOHASH]))
    url = "http://127.0.0.1:1/announce"
    with db.session() as s:
        s.add(Tracker(torrent_id=ids[("alpha", INFOHASH)], url=url))

    async def go() -> None:
        geo = Geolocator(city_db)
        async with Pipeline(db, geolocator=geo) as p:
            await p.put_sample(
                SampleRecord(INFOHASH, Source.TRACKER, "v1", T0, T0, 3, 10, 20, url, 1800, 60)
            )
            await p.put_sample(SampleRecord(INFOHASH, Source.DHT, "v1", T0, peers_returned=7))
            await p.flush()
            await p.put_sample(
                SampleRecord(INFOHASH, Source.TRACKER, "v1", T0, tracker_url=url, error="timeout")
            )
        geo.close()

    asyncio.run(go())
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 3
        tracker = s.scalars(select(Tracker)).one()
        assert (tracker.interval, tracker.min_interval, tracker.seeders, tracker.leechers) == (
            1800,
            60,
            10,
            20,
        )
        assert tracker.next_announce == T0 + timedelta(seconds=1800)
        assert tracker.failures == 1 and tracker.last_error == "timeout"


def test_samples_of_a_torrent_registered_after_the_last_reread_are_stored(
    db: Database, city_db: Path
) -> None:
    """Issue 14: a new torrent's first samples (a refusal of its non-loopback tracker,
    say) came before the pipeline re-read the registry, and were dropped as unknown."""
    register(db, ("alpha", [INFOHASH]))
    refused = "http://203.0.113.5/announce"

    async def go() -> Pipeline:
        geo = Geolocator(city_db)
        async with Pipeline(db, geolocator=geo, flush_seconds=0.05) as p:
            register(db, ("beta", [INFOHASH_B]))  # after the pipeline's start-up read
            await p.put_sample(
                SampleRecord(
                    INFOHASH_B,
                    Source.TRACKER,
                    "v1",
                    T0,
                    tracker_url=refused,
                    error="refused: outside loopback",
                )
            )
            await p.flush()

            def stored() -> int:
                with db.session() as s:
                    return int(s.scalar(select(func.count()).select_from(Sample)) or 0)

            async with asyncio.timeout(30):
                while await asyncio.to_thread(stored) == 0:
                    await asyncio.sleep(0.05)
        geo.close()
        return p

    p = asyncio.run(go())
    assert p.stats.unknown_samples == 0
    with db.session() as s:
        sample = s.scalars(select(Sample)).one()
        assert sample.error == "refused: outside loopback" and sample.tracker_url == refused


def test_sigterm_flushes_the_queue(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]))

    async def go() -> Pipeline:
        geo = Geolocator(city_db)
        # A long flush interval: only the signal makes the last partial batch go out.
        p = Pipeline(db, geolocator=geo, batch_size=1000, flush_seconds=3600)
        await p.start()
        p.close_on_signals([signal.SIGTERM])
        try:
            for i in range(250):
                await p.put(sighting(f"24.0.{i // 200}.{i % 200 + 1}"))
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(p.wait_closed(), 60)
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            geo.close()
        return p

    p = asyncio.run(go())
    assert p.stats.stored == 250
    with db.session() as s:
        assert s.scalar(select(func.sum(Peer.sightings))) == 250
    with pytest.raises(PipelineClosed):
        asyncio.run(p.put(sighting("81.2.69.160")))


def test_put_waits_when_the_buffer_is_full(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]))

    async def go() -> int:
        geo = Geolocator(city_db)
        p = Pipeline(db, geolocator=geo, batch_size=5, queue_size=5)
        for i in range(5):
            await p.put(sighting(f"24.0.0.{i + 1}"))
        blocked = asyncio.ensure_future(p.put(sighting("24.0.0.99")))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # back-pressure: the sixth waits for the consumer
        await p.start()
        await asyncio.wait_for(blocked, 30)
        await p.close()
        geo.close()
        return p.stats.stored

    assert asyncio.run(go()) == 6


def test_geolocation_in_a_worker_process(db: Database, city_db: Path) -> None:
    register(db, ("alpha", [INFOHASH]))
    items = [sighting(k.address) for k in KNOWN]
    p = asyncio.run(run(db, city_db, items, workers=1, ranges=False))
    assert p.stats.geo_lookups == len(KNOWN) - 1  # ::ffff:81.2.69.161 hit the cached /27
    with db.session() as s:
        got = {r.geoname_id for r in s.scalars(select(Peer))}
    assert got == {k.geoname_id for k in KNOWN}


def test_ipv4_is_placed_from_the_range_table(db: Database, city_db: Path) -> None:
    """With the range table, only IPv6 addresses are looked up in the database (the
    worker); the places are the same."""
    register(db, ("alpha", [INFOHASH]))
    items = [sighting(k.address) for k in KNOWN]
    v6 = {key for k in KNOWN if (key := address_key(addr(k.address))) >= 1 << 32}
    p = asyncio.run(run(db, city_db, items, workers=1))
    assert p.stats.geo_lookups == len(v6)
    with db.session() as s:
        got = {r.geoname_id for r in s.scalars(select(Peer))}
    assert got == {k.geoname_id for k in KNOWN}
