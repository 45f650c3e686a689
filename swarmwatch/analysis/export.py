"""Files for papers: rankings CSV per level, the rankings.json sidecar, cell and city GeoJSON.

The API streams the same bytes; `swarmwatch export` writes them with export_study().
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h3
from sqlalchemy import Connection

from swarmwatch.analysis.rankings import (
    ALPHA60_CSV_COLUMNS,
    CSV_COLUMNS,
    LEVELS,
    Ranking,
    compute_ranking,
    density_range,
)
from swarmwatch.analysis.scope import Scope, resolve_scope
from swarmwatch.safefiles import OutputFolder
from swarmwatch.store import Database
from swarmwatch.store.models import Study

#: Rows per streamed CSV chunk: a few KB per write keeps memory flat and syscalls few.
CSV_CHUNK_ROWS = 500


def iter_csv(ranking: Ranking) -> Iterator[str]:
    """The ranking as UTF-8 CSV text in chunks (header first, RFC 4180 quoting, \\r\\n)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    alpha60 = ranking.metric == "alpha60_density"
    writer.writerow(ALPHA60_CSV_COLUMNS if alpha60 else CSV_COLUMNS)
    for i, row in enumerate(ranking.rows, 1):
        writer.writerow(row.csv_values(ranking.metric))
        if i % CSV_CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def sidecar(ranking: Ranking) -> dict[str, Any]:
    """What rankings.json says about one CSV: scope, method, columns, counts."""
    return {
        **ranking.method,
        "places_published": ranking.places_published,
        "places_suppressed": ranking.places_suppressed,
        "rows": len(ranking.rows),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def method_headers(ranking: Ranking) -> dict[str, str]:
    """The essentials of the method as HTTP response headers (ASCII-safe)."""
    m = ranking.method
    geoip = "; ".join(
        f"{g['database_type']} {g['build_date']}"
        + (" (stale default)" if g["embedded_stale_default"] else "")
        for g in m["geoip"]
    )
    values = {
        "X-Swarmwatch-Study": f"{m['study_id']} {m['study']}",
        "X-Swarmwatch-Title": m["title"] or "(all titles)",
        "X-Swarmwatch-Window": f"{m['window_from'] or '-'}/{m['window_to'] or '-'}",
        "X-Swarmwatch-Level": m["level"],
        "X-Swarmwatch-K": str(m["k_threshold"]),
        "X-Swarmwatch-Geoip": geoip or "unknown",
        "X-Swarmwatch-Population-Source": m["population_source"],
        "X-Swarmwatch-Min-Population": str(m["min_population"]),
    }
    return {k: _header_safe(v) for k, v in values.items()}


def _header_safe(value: str) -> str:
    """Printable ASCII only: a study or title name may hold any character, and a control
    character (a tab aside) in a header value makes the server drop the connection."""
    return "".join(c if c == "\t" or " " <= c <= "~" else "?" for c in value)


def cells_geojson(ranking: Ranking) -> dict[str, Any]:
    """Published cells as polygons (GeoJSON is lon, lat; rings closed)."""
    features = []
    for row in ranking.rows:
        ring = [[lon, lat] for lat, lon in h3.cell_to_boundary(row.place_id)]
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "id": row.place_id,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": _properties(row),
            }
        )
    return {"type": "FeatureCollection", "features": features, "metadata": sidecar(ranking)}


def cities_geojson(ranking: Ranking) -> dict[str, Any]:
    """Published cities as points at their GeoNames coordinates."""
    features = [
        {
            "type": "Feature",
            "id": row.place_id,
            "geometry": {"type": "Point", "coordinates": [row.lon, row.lat]},
            "properties": _properties(row),
        }
        for row in ranking.rows
        if row.lat is not None and row.lon is not None
    ]
    return {"type": "FeatureCollection", "features": features, "metadata": sidecar(ranking)}


def _properties(row: Any) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "name": row.place,
        "country": row.country,
        "population": row.population,
        "peers": row.peers,
        "per_100k": row.per_100k,
        "ci_low": row.ci_low,
        "ci_high": row.ci_high,
    }


def export_scope(conn: Connection, scope: Scope, out_dir: Path, *, res: int = 4) -> list[Path]:
    """Write every export file for one scope; returns the paths written.

    Per level: rankings_{level}.csv (absolute) and rankings_{level}_per_capita.csv
    (per 100,000 residents with 95 % intervals, places of DEFAULT_MIN_POPULATION or
    more); with a loaded urban-area table that has land areas, also
    rankings_metro_alpha60_density.csv. rankings.json describes each of them.
    Never through a symlink (swarmwatch.safefiles): an unsafe --out or a symlink in it
    raises UnsafeTarget before anything is written over.
    """
    written: list[Path] = []
    sidecars: dict[str, Any] = {}
    rankings: dict[str, Ranking] = {}
    wanted = [(level, metric) for level in LEVELS for metric in ("absolute", "per_capita")]
    if density_range(conn) is not None:
        wanted.append(("metro", "alpha60_density"))
    with OutputFolder(out_dir) as folder:
        for level, metric in wanted:
            ranking = compute_ranking(conn, scope, level=level, metric=metric, limit=None, res=res)
            if metric == "absolute":
                rankings[level] = ranking
            suffix = "" if metric == "absolute" else f"_{metric}"
            name = f"rankings_{level}{suffix}.csv"
            with folder.open_text(name) as fh:
                for chunk in iter_csv(ranking):
                    fh.write(chunk)
            written.append(out_dir / name)
            sidecars[name] = sidecar(ranking)
        text = json.dumps(sidecars, indent=2, ensure_ascii=False)
        written.append(folder.write_text("rankings.json", text))
        for name, doc in (
            ("cells.geojson", cells_geojson(rankings["cell"])),
            ("cities.geojson", cities_geojson(rankings["city"])),
        ):
            written.append(folder.write_text(name, json.dumps(doc, ensure_ascii=False)))
    return written


def export_study(
    db: Database,
    study_id: int,
    out_dir: Path | str,
    *,
    title: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    vantage: str | None = None,
    res: int = 4,
    exact: bool = False,
) -> list[Path]:
    """`swarmwatch export`: the API's export files for a study, written to out_dir.

    Protected (cell-key perturbed, as the public reads them) unless `exact`: a paper's
    CSV is public, so the operator has to ask for true counts."""
    with db.engine.connect() as conn:
        with db.session() as session:
            study = session.get(Study, study_id)
            if study is None:
                raise LookupError(f"study {study_id} not found")
        scope = resolve_scope(
            conn, study, title=title, start=start, end=end, vantage=vantage, exact=exact
        )
        return export_scope(conn, scope, Path(out_dir), res=res)


__all__ = [
    "cells_geojson",
    "cities_geojson",
    "export_scope",
    "export_study",
    "iter_csv",
    "method_headers",
    "sidecar",
]
