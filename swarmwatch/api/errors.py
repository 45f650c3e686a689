"""JSON error answers sent from raw ASGI middleware, in the API's {"detail": ...} shape."""

from __future__ import annotations

import json
from typing import Any


async def send_json_error(
    send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete {"detail": ...} response where no FastAPI handler can run."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
