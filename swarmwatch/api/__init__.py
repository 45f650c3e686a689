"""The REST API (/api/v1) and the web map, served by FastAPI."""

from __future__ import annotations

from swarmwatch.api.app import create_app

__all__ = ["create_app"]
