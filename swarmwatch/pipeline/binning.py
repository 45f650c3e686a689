"""Binning: a geolocated point to an H3 cell at one stored base resolution.

Coarser levels are always one cell_to_parent() away, so only the base cell is stored.
"""

from __future__ import annotations

from h3.api import basic_int as h3i

#: H3 resolution stored with every sighting and peer: 7 (cells of ~5 km², edge ~1.4 km).
#: A City database puts every peer of a city on that city's single point, so a finer
#: cell adds no information, and the privacy model forbids anything finer than that
#: point anyway; 7 is the coarsest level that still keeps neighbouring GeoNames towns
#: (a few km apart) in different cells, and it is finer than every level the
#: analysis keeps (rollups use 2-6), which it derives by parent.
H3_BASE_RESOLUTION = 7


def cell_for(lat: float, lon: float) -> int:
    """The base-resolution H3 cell (as an int) holding a point."""
    return int(h3i.latlng_to_cell(lat, lon, H3_BASE_RESOLUTION))


def parent_cell(cell: int, resolution: int) -> int:
    """The cell at a coarser resolution (resolution <= H3_BASE_RESOLUTION)."""
    if resolution > H3_BASE_RESOLUTION:
        raise ValueError(f"resolution {resolution} is finer than the stored {H3_BASE_RESOLUTION}")
    return int(h3i.cell_to_parent(cell, resolution))


__all__ = ["H3_BASE_RESOLUTION", "cell_for", "parent_cell"]
