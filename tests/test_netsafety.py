"""loopback_only: only 127.0.0.0/8, ::1 and localhost pass; everything else is refused."""

from __future__ import annotations

import pytest

from swarmwatch.netsafety import (
    DestinationRefused,
    check_destination,
    is_loopback,
    loopback_ip_filter,
    resolve_checked,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_passes(host: str) -> None:
    assert is_loopback(host)
    check_destination(host, loopback_only=True)


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "10.0.0.1",
        "192.168.1.1",
        "router.bittorrent.com",
        "::ffff:8.8.8.8",
        "0.0.0.0",
        "",
    ],
)
def test_everything_else_is_refused(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(DestinationRefused):
        check_destination(host, loopback_only=True)
    check_destination(host, loopback_only=False)  # allowed when the user says so


def test_resolve_checked_never_resolves_a_refused_name() -> None:
    with pytest.raises(DestinationRefused):
        resolve_checked("router.bittorrent.com", 6881, loopback_only=True)
    assert all(
        i[4][0] in ("127.0.0.1", "::1") for i in resolve_checked("localhost", 1, loopback_only=True)
    )


def test_libtorrent_filter_blocks_all_but_loopback() -> None:
    f = loopback_ip_filter()
    assert f.access("127.0.0.5") == 0 and f.access("::1") == 0
    for addr in ("8.8.8.8", "10.1.1.1", "2001:db8::1", "255.255.255.255"):
        assert f.access(addr) == 1
