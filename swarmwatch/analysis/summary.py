"""A study's (or title's) headline numbers: unique peers, anomalies, series, estimate.

Everything comes from rollups except the seed/leecher/unknown split, one aggregate
over the peer table (whose seed column is the peer's state over all its sightings),
reused while the data version holds, as Chao1 is.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select

from swarmwatch.analysis import cellkey
from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.estimators import chao1
from swarmwatch.analysis.samplenoise import publication_key, publish_count
from swarmwatch.analysis.scope import Scope, geoip_provenance
from swarmwatch.analysis.versioned import data_version
from swarmwatch.store.models import Anomaly, Peer, Title, Torrent
from swarmwatch.store.rollups import (
    DAY,
    rollup_active,
    rollup_activity,
    rollup_peer_times,
    rollup_place,
)
from swarmwatch.store.rollups import rollup_place_day as place_day


def _published(scope: Scope, counts: Mapping[str, tuple[int, int]]) -> dict[str, int | None]:
    """(count, record-key sum) pairs as this reader may see them: exact for owners,
    each perturbed as a cell of its own (analysis.cellkey) for everyone else."""
    return {key: scope.count(n, rk) for key, (n, rk) in counts.items()}


SMALL_COUNTS = str(cellkey.DEFAULT_TABLE.describe()["small_counts"])


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()


def compute_summary(
    conn: Connection, scope: Scope, caches: AnalysisCaches | None = None
) -> dict[str, Any]:
    titles: Any = bindparam("titles", list(scope.title_ids), expanding=True)
    src = place_day if scope.by_day else rollup_place
    where: list[Any] = [src.c.title_id.in_(titles)]
    if scope.by_day:
        if scope.day_from is not None:
            where.append(src.c.day >= scope.day_from)
        if scope.day_to is not None:
            where.append(src.c.day < scope.day_to)
        if scope.vantage is not None:
            where.append(src.c.vantage == scope.vantage)
    placed = case((src.c.geoname_id != 0, src.c.peers), else_=0)
    placed_rk = case((src.c.geoname_id != 0, src.c.peers_rk), else_=0)
    country_cond = (src.c.geoname_id == 0) & (src.c.country != "")
    country_only = case((country_cond, src.c.peers), else_=0)
    country_rk = case((country_cond, src.c.peers_rk), else_=0)
    per_title = conn.execute(
        select(
            src.c.title_id,
            func.sum(src.c.peers),
            func.sum(src.c.seeds),
            func.sum(placed),
            func.sum(country_only),
            func.sum(src.c.peers_rk),
            func.sum(src.c.seeds_rk),
            func.sum(placed_rk),
            func.sum(country_rk),
        )
        .where(*where)
        .group_by(src.c.title_id)
    ).all()

    def total_of(i: int) -> int:
        return sum(int(r[i]) for r in per_title)

    total, seeds, city, country = (total_of(i) for i in (1, 2, 3, 4))
    total_rk, seeds_rk, city_rk, country_rk_sum = (total_of(i) for i in (5, 6, 7, 8))
    unlocated, unlocated_rk = total - city - country, total_rk - city_rk - country_rk_sum
    # Each number is its own cell, perturbed by its own peers' keys: a difference of two
    # published numbers is the difference of the true ones plus two unrelated noises.
    places = _published(
        scope,
        {
            "city": (city, city_rk),
            "anomalies": (country + unlocated, country_rk_sum + unlocated_rk),
            "country_only": (country, country_rk_sum),
            "unlocated": (unlocated, unlocated_rk),
        },
    )
    del seeds, seeds_rk  # rollup_place counts seeds at first sighting: not what a reader expects
    states = (
        seed_states(conn, scope.title_ids, scope.window, caches) if scope.vantage is None else None
    )
    state = (
        _published(scope, states)
        if states is not None
        else {"seeds": None, "leechers": None, "unknown": None}
    )
    title_names = dict(conn.execute(select(Title.id, Title.name).where(Title.id.in_(titles))).all())
    by_title = _published(scope, {title_names[r[0]]: (int(r[1]), int(r[5])) for r in per_title})
    anomalies = places["anomalies"]
    published_total = scope.count(total, total_rk)
    share = (
        round(min(1.0, anomalies / published_total), 6)
        if anomalies is not None and published_total
        else None
    )

    activity = rollup_activity
    act_where: list[Any] = [activity.c.title_id.in_(titles)]
    if scope.day_from is not None:
        act_where.append(activity.c.day >= scope.day_from)
    if scope.day_to is not None:
        act_where.append(activity.c.day < scope.day_to)
    if scope.vantage is not None:
        act_where.append(activity.c.vantage == scope.vantage)

    def sightings_by(column: Any, rk: Any) -> dict[str, int | None]:
        # Sightings are not distinct peers: their noise is keyed by the sum of the record
        # keys of the peers the source (vantage) saw, each once (rollups.SourceEntries),
        # so the same peers always get the same noise and repeats cannot average it away.
        rows = conn.execute(
            select(column, func.sum(activity.c.sightings), func.sum(rk))
            .where(*act_where)
            .group_by(column)
        ).all()
        return _published(scope, {str(r[0]): (int(r[1]), int(r[2])) for r in rows})

    daily_new = {
        int(r[0]): (int(r[1]), int(r[2]))
        for r in conn.execute(
            select(
                activity.c.day, func.sum(activity.c.new_peers), func.sum(activity.c.new_peers_rk)
            )
            .where(*act_where)
            .group_by(activity.c.day)
        ).all()
    }
    a = rollup_active
    active_where: list[Any] = [a.c.title_id.in_(titles), a.c.interval_s == DAY]
    if scope.day_from is not None:
        active_where.append(a.c.bucket >= scope.day_from)
    if scope.day_to is not None:
        active_where.append(a.c.bucket < scope.day_to)
    daily_active = {
        int(r[0]): (int(r[1]), int(r[2]))
        for r in conn.execute(
            select(a.c.bucket, func.sum(a.c.peers), func.sum(a.c.peers_rk))
            .where(*active_where)
            .group_by(a.c.bucket)
        ).all()
    }
    days = sorted(set(daily_new) | set(daily_active))
    daily: list[dict[str, Any]] = [
        {
            "day": _day(d),
            "active_peers": scope.count(*daily_active.get(d, (0, 0))),
            "new_peers": scope.count(*daily_new.get(d, (0, 0))),
        }
        for d in days
    ]
    # The high-water mark is the largest published daily value: nothing new to protect.
    visible_days = [d for d in daily if d["active_peers"] is not None]
    hwm = max(visible_days, key=lambda d: d["active_peers"], default=None)

    answer: dict[str, Any] = {
        "study_id": scope.study_id,
        "title": scope.title,
        "unique_peers": published_total,
        "downloads_estimate": published_total,
        "placed_at_city": places["city"],
        "anomalies": anomalies,
        "anomaly_share": share,
        "country_only": places["country_only"],
        "unlocated": places["unlocated"],
        "seeds": state["seeds"],
        "leechers": state["leechers"],
        "unknown_state": state["unknown"],
        "by_title": by_title,
        "sightings_by_source": sightings_by(activity.c.source, activity.c.source_rk),
        "sightings_by_vantage": sightings_by(activity.c.vantage, activity.c.vantage_rk),
        "daily": daily,
        "high_water_mark": hwm,
        "anomaly_sightings_by_reason": _anomaly_reasons(conn, scope),
        "estimate": _estimate(conn, scope, caches) if not scope.by_day else None,
        "method": {
            **scope.describe(),
            "seeds": SEED_STATE_METHOD,
            "anomalies": "unique peers the GeoIP database could not place at a city",
            "daily": "active_peers: distinct peers seen that UTC day; new_peers: first seen",
            "suppression": "none: the owner's exact read" if scope.exact else SMALL_COUNTS,
            "geoip": geoip_provenance(conn),
        },
    }
    return answer


#: The definition the method block states, and the one seed_states() counts by.
SEED_STATE_METHOD = (
    "seeds: peers that any sighting with known state showed as a seed (all pieces); "
    "leechers: peers seen with known state, never as a seed; unknown_state: peers whose "
    "state no sighting showed (tracker and DHT answers carry none), counted apart, never "
    "as leechers. State is a peer's over every vantage, so a vantage filter leaves these null"
)


def seed_states(
    conn: Connection,
    title_ids: tuple[int, ...],
    window: tuple[datetime | None, datetime | None] = (None, None),
    caches: AnalysisCaches | None = None,
) -> dict[str, tuple[int, int]]:
    """{"seeds", "leechers", "unknown"}: (peers, their record-key sum) of the titles
    (first seen in the window).

    One pass over those titles' peer rows, so reused from `caches` while the data
    version holds and refreshed in the background while ingest goes on, as Chao1 is.
    """
    engine = conn.engine

    def count(c: Connection) -> dict[str, tuple[int, int]]:
        where: list[Any] = [Peer.title_id.in_(bindparam("titles", list(title_ids), expanding=True))]
        start, end = window
        if start is not None:
            where.append(Peer.first_seen >= start)
        if end is not None:
            where.append(Peer.first_seen < end)
        rows = c.execute(
            select(Peer.seed, func.count(), func.coalesce(func.sum(Peer.record_key), 0))
            .where(*where)
            .group_by(Peer.seed)
        ).all()
        by = {seed: (int(n), int(rk)) for seed, n, rk in rows}
        return {
            "seeds": by.get(True, (0, 0)),
            "leechers": by.get(False, (0, 0)),
            "unknown": by.get(None, (0, 0)),
        }

    if caches is None:
        return count(conn)

    def refresh() -> tuple[Hashable, dict[str, tuple[int, int]]]:
        with engine.connect() as own:
            return data_version(own, title_ids), count(own)

    return (
        caches.seed_states.of(engine)
        .get((title_ids, window), data_version(conn, title_ids), lambda: count(conn), refresh)
        .value
    )


def _anomaly_reasons(conn: Connection, scope: Scope) -> dict[str, int | None]:
    """Sightings the pipeline could not place, by reason (the pipeline's anomaly table)."""
    rows = conn.execute(
        select(Anomaly.reason, func.sum(Anomaly.count))
        .join(Torrent, Torrent.id == Anomaly.torrent_id)
        .where(Torrent.title_id.in_(bindparam("titles", list(scope.title_ids), expanding=True)))
        .group_by(Anomaly.reason)
    ).all()
    # Sightings of unplaced addresses by reason carry no record keys (they are not peer
    # rows): their noise is keyed by what each number is (analysis.samplenoise).
    if scope.exact:
        return {str(r[0]): int(r[1]) for r in rows}
    key = publication_key(conn)
    titles = ",".join(map(str, sorted(scope.title_ids)))
    return {
        str(r[0]): publish_count(key, int(r[1]), scope.k, "anomaly", titles, r[0]) for r in rows
    }


def _estimate(
    conn: Connection, scope: Scope, caches: AnalysisCaches | None
) -> dict[str, Any] | None:
    """Chao1 per scope, reused from `caches` while the data version holds and refreshed
    in the background while ingest goes on (see versioned)."""
    engine = conn.engine
    caches = caches or AnalysisCaches()

    def refresh() -> tuple[Hashable, dict[str, Any] | None]:
        with engine.connect() as own:
            return data_version(own, scope.title_ids), _chao1(own, scope)

    cached = caches.estimates.of(engine).get(
        (scope.title_ids, scope.k, scope.exact),
        data_version(conn, scope.title_ids),
        lambda: _chao1(conn, scope),
        refresh,
    )
    if cached.value is None:
        return None
    return {**cached.value, "data_read_at": cached.read_at.isoformat(timespec="seconds")}


def _chao1(conn: Connection, scope: Scope) -> dict[str, Any] | None:
    """Chao1 from how many samples saw each peer (peer.sightings): the observed peers
    (one new peer each) and f1, f2 (peers seen once, twice) from their rollups. For
    anyone but an owner, from the protected S, f1 and f2 only (cellkey.protected_chao1)."""
    titles: Any = bindparam("titles", list(scope.title_ids), expanding=True)
    act = rollup_activity
    observed, observed_rk = conn.execute(
        select(
            func.coalesce(func.sum(act.c.new_peers), 0),
            func.coalesce(func.sum(act.c.new_peers_rk), 0),
        ).where(act.c.title_id.in_(titles))
    ).one()
    times = rollup_peer_times
    f = {
        int(r[0]): (int(r[1]), int(r[2]))
        for r in conn.execute(
            select(times.c.times, func.sum(times.c.peers), func.sum(times.c.peers_rk))
            .where(times.c.title_id.in_(titles))
            .group_by(times.c.times)
        ).all()
    }
    s_pub = scope.count(int(observed), int(observed_rk))
    f1_pub = scope.count(*f.get(1, (0, 0)))
    f2_pub = scope.count(*f.get(2, (0, 0)))
    if s_pub is None or s_pub < scope.k:
        return None
    if scope.exact:
        assert f1_pub is not None and f2_pub is not None  # exact reads withhold nothing
        est = chao1(s_pub, f1_pub, f2_pub)
    else:
        protected = cellkey.protected_chao1(s_pub, f1_pub, f2_pub)
        if protected is None:
            # A withheld f1 or f2 would be pinned down by the estimate: no estimate.
            return None
        est = protected
    return {
        "method": est.method,
        "observed": s_pub,
        "f1": f1_pub,
        "f2": f2_pub,
        "estimate": round(est.estimate, 1),
        "ci_low": round(est.ci_low, 1),
        "ci_high": round(est.ci_high, 1),
        "unseen": round(est.estimate - s_pub, 1),
    }


__all__ = ["SEED_STATE_METHOD", "compute_summary", "seed_states"]
