"""Real .torrent files for tests, made by libtorrent over random payloads."""

from __future__ import annotations

import os
from pathlib import Path

import libtorrent as lt


def make_torrent(
    directory: Path,
    name: str = "episode.mkv",
    size: int = 100_000,
    trackers: tuple[str, ...] = ("http://127.0.0.1:6969/announce",),
    v1_only: bool = False,
) -> bytes:
    """Create a payload file and return the bencoded .torrent describing it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(os.urandom(size))
    flags = lt.create_torrent.v1_only if v1_only else 0
    ct = lt.create_torrent(lt.list_files(str(directory / name)), 16384, flags)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    lt.set_piece_hashes(ct, str(directory))
    return bytes(lt.bencode(ct.generate()))
