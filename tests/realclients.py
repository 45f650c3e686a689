"""Third-party BitTorrent clients on loopback for the interoperability suite.

transmission-daemon, aria2c and rtorrent from Debian, each on its own 127.0.0.x
address, behind one opentracker. Everything that could reach past loopback is off:
Transmission's DHT (it bootstraps from public routers), LPD (multicast) and port
forwarding (UPnP/NAT-PMP); aria2's LPD; rtorrent's DHT. aria2's DHT has no default
entry point, so its nodes only ever meet the loopback nodes they are given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

OPENTRACKER = shutil.which("opentracker")
TRANSMISSION = shutil.which("transmission-daemon")
TRANSMISSION_REMOTE = shutil.which("transmission-remote")
ARIA2C = shutil.which("aria2c")
RTORRENT = shutil.which("rtorrent")
#: Every client's upload cap (KB/s): with the leechers' download caps (aria2's leecher has
#: none, see start_aria2) it keeps each leecher a leecher for a crawl of many minutes.
UPLOAD_KB = 4
#: Debian packages the suite needs (scripts/test.sh installs them).
MISSING = [
    name
    for name, path in (
        ("opentracker", OPENTRACKER),
        ("transmission-daemon", TRANSMISSION),
        ("transmission-cli", TRANSMISSION_REMOTE),
        ("aria2", ARIA2C),
        ("rtorrent", RTORRENT),
    )
    if path is None
]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on host (trackers and DHT nodes share numbers)."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for TCP and UDP")


def wait_listening(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port}")


@dataclass
class Client:
    """One running third-party client: which, where, and whether it seeds."""

    kind: str  # "transmission", "aria2" or "rtorrent"
    address: str
    peer_port: int
    seed: bool
    process: subprocess.Popen[bytes]
    dht_port: int | None = None
    rpc_port: int | None = None
    log: Path | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_opentracker(
    workdir: Path, infohashes: list[str], *, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A whitelisting opentracker on 127.0.0.1 (it refuses to run as root: -u nobody)."""
    assert OPENTRACKER is not None
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # read by nobody after the drop
    (workdir / "whitelist.txt").write_text("".join(f"{ih}\n" for ih in infohashes))
    os.chmod(workdir / "whitelist.txt", 0o644)
    proc = subprocess.Popen(
        [OPENTRACKER, "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
        + ["-w", "whitelist.txt", "-d", str(workdir), "-u", "nobody"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening("127.0.0.1", port)
    return proc, port


def start_transmission(
    workdir: Path, address: str, torrent: Path, payload_dir: Path | None
) -> Client:
    """transmission-daemon on address: a seed when payload_dir holds the data, else a
    leecher capped at 4 KB/s so that it stays one for the whole crawl."""
    assert TRANSMISSION is not None and TRANSMISSION_REMOTE is not None
    config = workdir / "config"
    download = payload_dir or workdir / "download"
    config.mkdir(parents=True, exist_ok=True)
    download.mkdir(parents=True, exist_ok=True)
    peer_port, rpc_port = free_port(address), free_port(address)
    settings = {
        "bind-address-ipv4": address,
        "bind-address-ipv6": "::1",
        "peer-port": peer_port,
        "peer-port-random-on-start": False,
        "port-forwarding-enabled": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": True,
        "utp-enabled": True,
        "rpc-enabled": True,
        "rpc-bind-address": address,
        "rpc-port": rpc_port,
        "rpc-whitelist-enabled": False,
        "rpc-host-whitelist-enabled": False,
        "rpc-authentication-required": False,
        "download-dir": str(download),
        "incomplete-dir-enabled": False,
        "speed-limit-down": 4,
        "speed-limit-down-enabled": payload_dir is None,
        "speed-limit-up": UPLOAD_KB,
        "speed-limit-up-enabled": True,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "blocklist-enabled": False,
        "start-added-torrents": True,
        "message-level": 1,
    }
    (config / "settings.json").write_text(json.dumps(settings))
    log = workdir / "transmission.log"
    proc = subprocess.Popen(
        [TRANSMISSION, "-f", "-g", str(config), "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client("transmission", address, peer_port, payload_dir is not None, proc)
    client.rpc_port, client.log = rpc_port, log
    try:
        wait_listening(address, rpc_port)
        remote = [TRANSMISSION_REMOTE, f"{address}:{rpc_port}"]
        subprocess.run([*remote, "-a", str(torrent)], check=True, capture_output=True, timeout=30)
        if payload_dir is not None:
            subprocess.run(
                [*remote, "-t", "all", "-v"], check=True, capture_output=True, timeout=30
            )
    except BaseException:
        client.stop()
        raise
    return client


def start_aria2(
    workdir: Path,
    address: str,
    torrent: Path,
    payload_dir: Path | None,
    dht_entry: tuple[str, int] | None,
) -> Client:
    """aria2c on address with its DHT node: a seed over payload_dir, or a leecher.

    The leecher has no download cap: aria2 stops reading *every* message from its peers
    while its download rate is over a cap (PeerInteractionCommand, receiveMessages), so
    a capped aria2 leecher left BEP 9 metadata requests unread for most of a run. It
    stays a leecher because every client uploads at UPLOAD_KB KB/s at most."""
    assert ARIA2C is not None
    workdir.mkdir(parents=True, exist_ok=True)
    download = payload_dir or workdir / "download"
    download.mkdir(parents=True, exist_ok=True)
    peer_port, dht_port = free_port(address), free_port(address)
    args = [
        ARIA2C,
        f"--interface={address}",
        f"--bt-external-ip={address}",
        f"--listen-port={peer_port}",
        "--enable-dht=true",
        f"--dht-listen-port={dht_port}",
        f"--dht-file-path={workdir / 'dht.dat'}",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--seed-ratio=0.0",
        "--disable-ipv6=true",
        "--check-integrity=true",
        "--bt-hash-check-seed=true",
        "--console-log-level=warn",
        "--summary-interval=0",
        f"--dir={download}",
        f"--log={workdir / 'aria2.log'}",
        "--log-level=notice",
    ]
    args.append(f"--max-overall-upload-limit={UPLOAD_KB}K")
    if dht_entry is not None:
        args.append(f"--dht-entry-point={dht_entry[0]}:{dht_entry[1]}")
    args.append(str(torrent))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client("aria2", address, peer_port, payload_dir is not None, proc, dht_port=dht_port)
    client.log = workdir / "aria2.log"
    return _listening(client)


def start_rtorrent(workdir: Path, address: str, torrent: Path, payload_dir: Path | None) -> Client:
    """rtorrent (libtorrent by rakshasa, not the crawler's libtorrent) on address, as a
    daemon with no terminal: a seed over payload_dir, or a 4 KB/s leecher. Its DHT
    stays off (its default bootstrap is public); trackers and PEX are how it meets us."""
    assert RTORRENT is not None
    session = workdir / "session"
    download = payload_dir or workdir / "download"
    session.mkdir(parents=True, exist_ok=True)
    download.mkdir(parents=True, exist_ok=True)
    peer_port = free_port(address)
    log = workdir / "rtorrent.log"
    rc = [
        "system.daemon.set = true",
        f"network.bind_address.set = {address}",
        f"network.local_address.set = {address}",
        f"network.port_range.set = {peer_port}-{peer_port}",
        "network.port_random.set = no",
        f"directory.default.set = {download}",
        f"session.path.set = {session}",
        "dht.mode.set = disable",
        "protocol.pex.set = yes",
        "trackers.use_udp.set = no",
        f'log.open_file = "main", {log}',
        'log.add_output = "info", "main"',
    ]
    rc.append(f"throttle.global_up.max_rate.set_kb = {UPLOAD_KB}")
    if payload_dir is None:
        rc.append("throttle.global_down.max_rate.set_kb = 4")
    rc.append(f"load.start_verbose = {torrent}")
    (workdir / "rtorrent.rc").write_text("\n".join(rc) + "\n")
    # -n: not the user's ~/.rtorrent.rc; everything comes from the file above.
    proc = subprocess.Popen(
        [RTORRENT, "-n", "-o", f"import={workdir / 'rtorrent.rc'}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return _listening(
        Client("rtorrent", address, peer_port, payload_dir is not None, proc, log=log)
    )


def _listening(client: Client) -> Client:
    """The client once it accepts peers; stopped (not left running) if it never does."""
    try:
        wait_listening(client.address, client.peer_port, timeout=30)
    except BaseException:
        client.stop()
        raise
    return client


__all__ = [
    "MISSING",
    "Client",
    "free_port",
    "start_aria2",
    "start_opentracker",
    "start_rtorrent",
    "start_transmission",
    "wait_listening",
]
