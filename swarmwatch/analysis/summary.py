"""A study's (or title's) headline numbers: unique peers, anomalies, series, estimate.

Everything comes from rollups except Chao1's f1/f2, one aggregate over the peer table.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select

from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.analysis.disclosure import RULE, protect
from swarmwatch.analysis.estimators import chao1
from swarmwatch.analysis.scope import Scope, geoip_provenance
from swarmwatch.analysis.versioned import data_version
from swarmwatch.store.models import Anomaly, Title, Torrent
from swarmwatch.store.rollups import (
    DAY,
    rollup_active,
    rollup_activity,
    rollup_peer_times,
    rollup_place,
    unique_peers,
)
from swarmwatch.store.rollups import rollup_place_day as place_day


def _published(counts: Mapping[str, int], k: int, *groups: list[str]) -> dict[str, int | None]:
    """Counts protected as parts of published totals: all of them, or the given groups."""
    hidden = protect(dict(counts), k, [list(g) for g in groups], whole=not groups)
    return {key: (None if key in hidden else n) for key, n in counts.items()}


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()


def compute_summary(
    conn: Connection, scope: Scope, caches: AnalysisCaches | None = None
) -> dict[str, Any]:
    k = scope.k
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
    country_only = case(((src.c.geoname_id == 0) & (src.c.country != ""), src.c.peers), else_=0)
    per_title = conn.execute(
        select(
            src.c.title_id,
            func.sum(src.c.peers),
            func.sum(src.c.seeds),
            func.sum(placed),
            func.sum(country_only),
        )
        .where(*where)
        .group_by(src.c.title_id)
    ).all()
    total = sum(int(r[1]) for r in per_title)
    seeds = sum(int(r[2]) for r in per_title)
    city = sum(int(r[3]) for r in per_title)
    country = sum(int(r[4]) for r in per_title)
    unlocated = total - city - country
    places = _published(
        {
            "city": city,
            "anomalies": country + unlocated,
            "country_only": country,
            "unlocated": unlocated,
        },
        k,
        ["city", "anomalies"],
        ["country_only", "unlocated"],
    )
    state = _published({"seeds": seeds, "leechers": total - seeds}, k)
    title_names = dict(conn.execute(select(Title.id, Title.name).where(Title.id.in_(titles))).all())
    by_title = _published({title_names[r[0]]: int(r[1]) for r in per_title}, k)
    anomalies = places["anomalies"]
    published_total = total if total >= k else None
    share = (
        round(anomalies / total, 6)
        if anomalies is not None and published_total is not None
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

    def sightings_by(column: Any) -> dict[str, int | None]:
        rows = conn.execute(
            select(column, func.sum(activity.c.sightings)).where(*act_where).group_by(column)
        ).all()
        return _published({str(r[0]): int(r[1]) for r in rows}, k)

    daily_new = dict(
        conn.execute(
            select(activity.c.day, func.sum(activity.c.new_peers))
            .where(*act_where)
            .group_by(activity.c.day)
        ).all()
    )
    a = rollup_active
    active_where: list[Any] = [a.c.title_id.in_(titles), a.c.interval_s == DAY]
    if scope.day_from is not None:
        active_where.append(a.c.bucket >= scope.day_from)
    if scope.day_to is not None:
        active_where.append(a.c.bucket < scope.day_to)
    daily_active = dict(
        conn.execute(
            select(a.c.bucket, func.sum(a.c.peers)).where(*active_where).group_by(a.c.bucket)
        ).all()
    )
    new_published = _published({str(d): int(n) for d, n in daily_new.items()}, k)
    days = sorted(set(daily_new) | set(daily_active))
    daily: list[dict[str, Any]] = [
        {
            "day": _day(d),
            "active_peers": (int(daily_active.get(d, 0)) if daily_active.get(d, 0) >= k else None),
            "new_peers": new_published.get(str(d)),
        }
        for d in days
    ]
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
        "by_title": by_title,
        "sightings_by_source": sightings_by(activity.c.source),
        "sightings_by_vantage": sightings_by(activity.c.vantage),
        "daily": daily,
        "high_water_mark": hwm,
        "anomaly_sightings_by_reason": _anomaly_reasons(conn, scope),
        "estimate": _estimate(conn, scope, caches) if not scope.by_day else None,
        "method": {
            **scope.describe(),
            "seeds": "peers seen as seeds at their first sighting",
            "anomalies": "unique peers the GeoIP database could not place at a city",
            "daily": "active_peers: distinct peers seen that UTC day; new_peers: first seen",
            "suppression": RULE,
            "geoip": geoip_provenance(conn),
        },
    }
    return answer


def _anomaly_reasons(conn: Connection, scope: Scope) -> dict[str, int | None]:
    """Sightings the pipeline could not place, by reason (the pipeline's anomaly table)."""
    rows = conn.execute(
        select(Anomaly.reason, func.sum(Anomaly.count))
        .join(Torrent, Torrent.id == Anomaly.torrent_id)
        .where(Torrent.title_id.in_(bindparam("titles", list(scope.title_ids), expanding=True)))
        .group_by(Anomaly.reason)
    ).all()
    return _published({str(r[0]): int(r[1]) for r in rows}, scope.k)


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
        (scope.title_ids, scope.k),
        data_version(conn, scope.title_ids),
        lambda: _chao1(conn, scope),
        refresh,
    )
    if cached.value is None:
        return None
    return {**cached.value, "data_read_at": cached.read_at.isoformat(timespec="seconds")}


def _chao1(conn: Connection, scope: Scope) -> dict[str, Any] | None:
    """Chao1 from how many samples saw each peer (peer.sightings): the observed peers
    (one new peer each) and f1, f2 (peers seen once, twice) from their rollups."""
    titles = list(scope.title_ids)
    observed = unique_peers(conn, titles)
    f = dict(
        conn.execute(
            select(rollup_peer_times.c.times, func.sum(rollup_peer_times.c.peers))
            .where(rollup_peer_times.c.title_id.in_(bindparam("titles", titles, expanding=True)))
            .group_by(rollup_peer_times.c.times)
        ).all()
    )
    f1, f2 = int(f.get(1) or 0), int(f.get(2) or 0)
    if observed < scope.k:
        return None
    est = chao1(observed, f1, f2)
    # f1 and f2 are not parts of a published total: only the primary rule applies.
    hidden: set[Hashable] = protect({"f1": f1, "f2": f2}, scope.k, whole=False)
    return {
        "method": est.method,
        "observed": observed,
        "f1": None if "f1" in hidden else f1,
        "f2": None if "f2" in hidden else f2,
        "estimate": round(est.estimate, 1),
        "ci_low": round(est.ci_low, 1),
        "ci_high": round(est.ci_high, 1),
        "unseen": round(est.estimate - observed, 1),
    }


__all__ = ["compute_summary"]
