"""A real API server for the benchmarks: uvicorn in a child process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx


def serve(
    url: str, env: dict[str, str] | None = None, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn on a free loopback port, without access log (it would log client addresses)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    command = [
        sys.executable,
        "-m",
        # Ends with this process, however it ends (a benchmark killed by a timeout left
        # its server running before).
        "swarmwatch.parentwatch",
        str(os.getpid()),
        "uvicorn",
        "--factory",
        "swarmwatch.cli:server_app",  # what `swarmwatch serve` runs
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(
        command, env={**os.environ, **(env or {}), "SWARMWATCH_DATABASE_URL": url}
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # stuck behind its busy threads: never hang here
        proc.kill()
        proc.wait(timeout=30)


__all__ = ["serve", "stop"]
