"""Write files into an output folder without ever following a symlink.

`swarmwatch export --out DIR` writes to a path someone else may share (/tmp, a
project folder): a symlink planted there as rankings_city.csv must not make us
overwrite its target. The folder is opened once with O_NOFOLLOW, and each file is
written to a fresh name (O_EXCL | O_NOFOLLOW) relative to that open folder, then
renamed over the final name, which replaces a name and never writes through it.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class UnsafeTarget(ValueError):
    """The output folder, or a name in it, is not a place we may write (one-line message)."""


class OutputFolder:
    """An open output folder; write_text/open_text create or replace regular files in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.mkdir(parents=True)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeTarget(f"--out {path} is a symlink: give the real folder")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeTarget(f"--out {path} exists and is not a folder")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:  # swapped for a symlink since the check: refuse, never follow
            raise UnsafeTarget(f"--out {path}: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_name(self, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise UnsafeTarget(f"not a file name: {name!r}")
        try:
            st = os.lstat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            where = self.path / name
            raise UnsafeTarget(f"{where} is a symlink: remove it or choose another --out")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeTarget(f"{self.path / name} exists and is not a regular file")

    @contextmanager
    def open_text(self, name: str) -> Iterator[TextIO]:
        """A new file that becomes `name` once written (and nothing if writing fails)."""
        self._check_name(name)
        temp = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                yield fh
            # rename replaces the name itself: a symlink put there meanwhile is replaced,
            # its target untouched.
            os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            raise

    def write_text(self, name: str, text: str) -> Path:
        with self.open_text(name) as fh:
            fh.write(text)
        return self.path / name


__all__ = ["OutputFolder", "UnsafeTarget"]
