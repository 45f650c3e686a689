"""swarmwatch: measure where the people in BitTorrent swarms are.

Crawlers (tracker, DHT, libtorrent swarm sessions) yield PeerSightings; one
pipeline geolocates and anonymises them; the API serves rankings and maps.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The source checkout (or install prefix) holding migrations/ and web/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["PROJECT_ROOT", "__version__"]
