"""Everything a tracker client can raise, as one tree the crawler catches at its boundary.

    TrackerError
    ├── TrackerResponseError   bytes from the tracker do not parse (hostile, truncated,
    │                          wrong length, wrong transaction id, over 1 MiB) — counted
    ├── TrackerFailure         the tracker answered with a failure reason (BEP 3) or a
    │                          BEP 15 error packet
    ├── TrackerTimeout         no answer after the last retransmit / the HTTP timeout
    └── TrackerUnreachable     connection refused, DNS failure, unsupported URL

netsafety.DestinationRefused is not in this tree on purpose: refusing a
destination is policy, not a tracker fault, and the crawler reports it as such.
Messages never contain a peer address (tracker-supplied text is scrubbed).
"""

from __future__ import annotations

import re

# Tracker-supplied text ends up in SampleRecord.error and so in the database:
# anything that looks like an address is replaced, since it could be a peer's.
_ADDRESS_LIKE = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}")
#: Longest tracker-supplied message kept: enough to diagnose, bounded for storage.
MAX_MESSAGE_CHARS = 200


def scrub_message(raw: bytes | str) -> str:
    """Printable, bounded, address-free text from untrusted tracker bytes."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = "".join(ch if ch.isprintable() else "?" for ch in text[: MAX_MESSAGE_CHARS * 2])
    return _ADDRESS_LIKE.sub("<addr>", text)[:MAX_MESSAGE_CHARS]


class TrackerError(Exception):
    """Base of every tracker client error."""

    kind = "error"


class TrackerResponseError(TrackerError):
    """The tracker's answer is malformed: the one parse-error type of this package."""

    kind = "response"


class TrackerFailure(TrackerError):
    """The tracker refused the request and said why (message scrubbed)."""

    kind = "failure"

    def __init__(self, reason: bytes | str) -> None:
        super().__init__(scrub_message(reason))


class TrackerTimeout(TrackerError):
    kind = "timeout"


class TrackerUnreachable(TrackerError):
    kind = "unreachable"


__all__ = [
    "MAX_MESSAGE_CHARS",
    "TrackerError",
    "TrackerFailure",
    "TrackerResponseError",
    "TrackerTimeout",
    "TrackerUnreachable",
    "scrub_message",
]
