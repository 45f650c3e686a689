"""The libtorrent session a swarm crawler runs in: settings and the loopback guard.

One place decides what the session may reach: under loopback_only it gets an
ip_filter that blocks all but loopback, no public DHT bootstrap, and no LSD/UPnP/NAT-PMP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, cast

import libtorrent as lt

from swarmwatch.netsafety import check_destination, loopback_ip_filter

#: libtorrent drops alerts past this many and posts alerts_dropped_alert; it is the
#: bound on memory between the network thread and our pump (default is 1000).
ALERT_QUEUE_SIZE = 10_000

ALERT_MASK = (
    lt.alert.category_t.status_notification  # metadata_received, torrent state
    | lt.alert.category_t.error_notification
    | lt.alert.category_t.tracker_notification  # tracker_reply / tracker_error
    | lt.alert.category_t.dht_operation_notification  # dht_get_peers_reply
)

#: What a loopback-only session needs for its DHT (TESTBED.md). Empty bootstrap: never
#: the public routers; the rest: loopback DHT nodes look like a Sybil attack otherwise.
LOOPBACK_DHT_SETTINGS: dict[str, Any] = {
    "dht_bootstrap_nodes": "",
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_prefer_verified_node_ids": False,
    "dht_ignore_dark_internet": False,
    "dht_enforce_node_id": False,
}


def session_settings(
    *,
    loopback_only: bool,
    listen_interfaces: str,
    enable_dht: bool,
    user_agent: str = "swarmwatch/0.1",
    reconnect_seconds: int = 60,
) -> dict[str, Any]:
    """A settings_pack (as a dict) for a crawling session."""
    settings: dict[str, Any] = {
        "listen_interfaces": listen_interfaces,
        "user_agent": user_agent,
        "alert_mask": ALERT_MASK,
        "alert_queue_size": ALERT_QUEUE_SIZE,
        "enable_dht": enable_dht,
        # Multicast and router port mapping reach past loopback, and a crawler needs neither.
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # A crawler wants to stay connected to seeds to read their state; it
        # never downloads, so nothing is "redundant" about those connections.
        "close_redundant_connections": False,
        # libtorrent dials a peer again only (failures + 1) x this many seconds after its
        # last connection closed (60 by default): a crawler re-sights every round, so a
        # peer that dropped an idle connection is dialled again well within the next
        # round (the crawler passes a fifth of a round: ltsession.crawler.reconnect_seconds).
        "min_reconnect_time": max(1, reconnect_seconds),
        # Dial TCP only, which every BitTorrent client accepts. libtorrent dials uTP
        # first; a client without uTP (aria2) lets that time out, and when a dropped
        # peer is dialled again libtorrent does not always fall back to TCP, so the
        # peer went unsighted for the rest of the crawl. Incoming uTP still works.
        "enable_outgoing_utp": False,
        # TCP dials leave from the address we listen on: the kernel would otherwise pick
        # the source address (127.0.0.1 for any loopback peer), and a peer would see one
        # crawler under another's address (uTP left from the listen socket anyway).
        "outgoing_interfaces": ",".join(bound_hosts(listen_interfaces)),
        # Shutdown waits this long for "stopped" announces, not the 5 s default.
        "stop_tracker_timeout": 1,
    }
    if loopback_only:
        settings.update(LOOPBACK_DHT_SETTINGS)
    return settings


def bound_hosts(listen_interfaces: str) -> list[str]:
    """The specific addresses in 'host:port,[v6]:port' (not 0.0.0.0 or ::, nor names)."""
    hosts: list[str] = []
    for item in listen_interfaces.split(","):
        host = item.strip().rpartition(":")[0].strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not ip.is_unspecified:
            hosts.append(str(ip))
    return hosts


def new_session(
    *,
    loopback_only: bool,
    listen_interfaces: str,
    enable_dht: bool,
    dht_nodes: Sequence[tuple[str, int]] = (),
    reconnect_seconds: int = 60,
) -> Any:
    """A started libtorrent session, guarded for loopback_only before it can send a packet."""
    for host, _port in dht_nodes:
        check_destination(host, loopback_only=loopback_only, what="DHT bootstrap node")
    params = lt.session_params()
    settings = session_settings(
        loopback_only=loopback_only,
        listen_interfaces=listen_interfaces,
        enable_dht=enable_dht,
        reconnect_seconds=reconnect_seconds,
    )
    params.settings = cast("lt.settings_pack", settings)
    if loopback_only:
        # In the params, not set afterwards: there is no moment without the filter.
        params.ip_filter = loopback_ip_filter()
    ses = lt.session(params)
    if enable_dht:
        for node in dht_nodes:
            ses.add_dht_node(node)
    return ses


def parse_host_ports(value: str) -> list[tuple[str, int]]:
    """'host:port,[v6]:port' (SWARMWATCH_DHT_BOOTSTRAP) as (host, port) pairs."""
    out: list[tuple[str, int]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


__all__ = [
    "ALERT_MASK",
    "ALERT_QUEUE_SIZE",
    "bound_hosts",
    "new_session",
    "parse_host_ports",
    "session_settings",
]
