"""What an analysis question is about: study, titles, day-aligned window, vantage.

Every answer echoes its resolved scope, so a CSV states exactly what it counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, select

from swarmwatch.analysis import cellkey
from swarmwatch.store.models import GeoipDatabase, Study, Title
from swarmwatch.store.rollups import DAY

#: The last UTC day (days since the epoch) whose start a datetime can hold: 9999-12-31.
LAST_DAY = (datetime.max.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days

COUNTING = (
    "unique peers (keyed peer hashes) per title, at the place, day and vantage of each "
    "peer's first sighting; a study counts the sum over its titles (downloads)"
)


class ScopeError(ValueError):
    """A question that cannot be answered as asked (unknown title, empty window)."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Scope:
    study_id: int
    study_name: str
    k: int
    title_ids: tuple[int, ...]
    title: str | None  # None: every title of the study
    day_from: int | None  # first UTC day (days since the epoch), inclusive
    day_to: int | None  # last UTC day, exclusive
    vantage: str | None
    # True only for the study's owners (and admins): they read true counts; everyone
    # else reads cell-key perturbed ones (analysis.cellkey). Protected unless told.
    exact: bool = False

    def count(self, n: int, rk_sum: int) -> int | None:
        """A count of n peers whose record keys sum to rk_sum, as this reader may see it."""
        if self.exact:
            return n
        return cellkey.publish(n, rk_sum, self.k)

    @property
    def by_day(self) -> bool:
        """Whether the answer needs the per-day rollups (a window or a vantage)."""
        return self.day_from is not None or self.day_to is not None or self.vantage is not None

    @property
    def window(self) -> tuple[datetime | None, datetime | None]:
        def at(day: int | None) -> datetime | None:
            return None if day is None else datetime.fromtimestamp(day * DAY, UTC)

        return at(self.day_from), at(self.day_to)

    def describe(self) -> dict[str, object]:
        start, end = self.window
        return {
            "study_id": self.study_id,
            "study": self.study_name,
            "title": self.title,
            "window_from": start.isoformat() if start else None,
            "window_to": end.isoformat() if end else None,
            "vantage": self.vantage,
            "k_threshold": self.k,
            "counting": COUNTING,
            "exact": self.exact,
            "noise": (
                "none: the study's owner reads exact counts"
                if self.exact
                else cellkey.DEFAULT_TABLE.describe()
            ),
        }


def resolve_scope(
    conn: Connection,
    study: Study,
    *,
    title: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    vantage: str | None = None,
    exact: bool = False,
) -> Scope:
    """Resolve title (id or name) and widen the window to whole UTC days.

    Windows are whole days because first sightings are rolled up per day; the
    answer says which days it covers.
    """
    rows = conn.execute(
        select(Title.id, Title.name).where(Title.study_id == study.id).order_by(Title.id)
    ).all()
    title_ids = tuple(r.id for r in rows)
    title_name: str | None = None
    if title is not None:
        match = [r for r in rows if r.name == title or str(r.id) == title]
        if not match:
            raise ScopeError(f"study {study.id} has no title {title!r}", status=404)
        title_ids, title_name = (match[0].id,), match[0].name
    day_from = None if start is None else math.floor(_utc(start).timestamp() / DAY)
    day_to = None if end is None else math.ceil(_utc(end).timestamp() / DAY)
    # Widened to whole days, a 'to' on 9999-12-31 ends in year 10000, which no datetime
    # can hold: the last representable day is as open-ended as that.
    if day_to is not None:
        day_to = min(day_to, LAST_DAY)
    if day_from is not None:
        day_from = min(day_from, LAST_DAY - 1)
    if day_from is not None and day_to is not None and day_to <= day_from:
        raise ScopeError("the window is empty: 'to' must be after 'from'")
    return Scope(
        study.id,
        study.name,
        study.k_threshold,
        title_ids,
        title_name,
        day_from,
        day_to,
        vantage,
        exact,
    )


def _utc(moment: datetime) -> datetime:
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC datetime
        raise ScopeError("date out of range (years 1 to 9999 in UTC)") from None


def geoip_provenance(conn: Connection) -> list[dict[str, object]]:
    """The City databases sightings were placed with, and their build dates."""
    # Columns, not the entity: on a Core connection .scalars() would give the id.
    rows = conn.execute(
        select(GeoipDatabase.database_type, GeoipDatabase.build_epoch, GeoipDatabase.embedded)
        .where(GeoipDatabase.kind == "city")
        .order_by(GeoipDatabase.first_used_at)
    )
    return [
        {
            "database_type": r.database_type,
            "build_date": datetime.fromtimestamp(r.build_epoch, UTC).date().isoformat(),
            "embedded_stale_default": r.embedded,
        }
        for r in rows
    ]


__all__ = ["COUNTING", "Scope", "ScopeError", "geoip_provenance", "resolve_scope"]
