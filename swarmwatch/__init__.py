"""swarmwatch: measure where the people in BitTorrent swarms are.

Crawlers (tracker, DHT, libtorrent swarm sessions) yield PeerSightings; one
pipeline geolocates and anonymises them; the API serves rankings and maps.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The source checkout this package runs from (an editable install), or site-packages.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path:
    """migrations/ or web/: inside the installed wheel (setup.py copies them into
    swarmwatch/_packaged/), else the source checkout's own folder."""
    packaged = Path(__file__).resolve().parent / "_packaged" / name
    return packaged if packaged.is_dir() else PROJECT_ROOT / name


__all__ = ["PROJECT_ROOT", "__version__", "shipped"]
