"""Network safety: with loopback_only on, refuse any destination off loopback.

Every crawler calls check_destination() before it sends a packet; libtorrent
sessions also get loopback_ip_filter(). See DESIGN.md, "Network safety".
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any


class DestinationRefused(Exception):
    """A destination outside loopback was asked for while loopback_only is on.

    The message names the host as the user configured it (a tracker URL or a
    bootstrap node), never a peer address learnt from a swarm.
    """


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the name 'localhost'."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_destination(host: str, *, loopback_only: bool, what: str = "destination") -> None:
    """Raise DestinationRefused if loopback_only forbids sending to host.

    Names are not resolved here: a name other than localhost could resolve
    anywhere, so under loopback_only only literal loopback addresses pass.
    """
    if loopback_only and not is_loopback(host):
        raise DestinationRefused(f"{what} {host!r} is outside loopback and loopback_only is on")


def resolve_checked(host: str, port: int, *, loopback_only: bool) -> list[tuple[Any, ...]]:
    """getaddrinfo, filtered so that under loopback_only only loopback answers remain."""
    check_destination(host, loopback_only=loopback_only)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if loopback_only:
        infos = [i for i in infos if ipaddress.ip_address(i[4][0]).is_loopback]
        if not infos:
            raise DestinationRefused(f"{host!r} resolved to no loopback address")
    return infos


def loopback_ip_filter() -> Any:
    """A libtorrent ip_filter that blocks every address but 127.0.0.0/8 and ::1."""
    import libtorrent as lt

    f = lt.ip_filter()
    f.add_rule("0.0.0.0", "255.255.255.255", 1)
    f.add_rule("127.0.0.0", "127.255.255.255", 0)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    f.add_rule("::1", "::1", 0)
    return f


__all__ = [
    "DestinationRefused",
    "check_destination",
    "is_loopback",
    "loopback_ip_filter",
    "resolve_checked",
]
