"""The map page's "Download video": the time-lapse as MP4, rendered once per state of the data.

A render drives Chromium and ffmpeg for tens of seconds, so its cost is bounded three
ways: finished videos are kept on disk and served again while the published frames are
unchanged, only one render runs at a time per server process (others get a 503 with
Retry-After), and the web size is 720p with at most MAX_WEB_FRAMES frames (longer or
larger videos: `swarmwatch video`). The path is also under the read rate limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from swarmwatch.api.deps import ReadableStudyDep
from swarmwatch.store.rollups import FRAME_INTERVALS, FRAME_RESOLUTIONS
from swarmwatch.timelapse import TimelapseError, timelapse_data
from swarmwatch.video import VideoError, render_video_data

log = logging.getLogger(__name__)

#: 720p: readable on a slide, and about half the render time of 1080p.
WEB_VIDEO_SIZE = (1280, 720)
WEB_VIDEO_FPS = 4.0
#: Five days of hourly frames with room to spare; longer runs belong to the CLI.
MAX_WEB_FRAMES = 240
#: Finished videos kept per process (a few MB each), least recently used dropped first.
KEPT_VIDEOS = 8
#: What a client is told to wait when another render is running (seconds).
RETRY_AFTER_S = 60

_STATE_LOCK = threading.Lock()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Delete this process's rendered videos when the server stops."""
    try:
        yield
    finally:
        renders = getattr(app.state, "video_renders", None)
        if renders is not None:
            renders.close()


router = APIRouter(prefix="/api/v1/studies", tags=["analysis"], lifespan=_lifespan)


class VideoRenders:
    """Videos rendered by this process, on disk under a private temporary directory."""

    def __init__(self, keep: int = KEPT_VIDEOS) -> None:
        self.keep = keep
        self.rendering = threading.Lock()  # one render at a time
        self._guard = threading.Lock()
        self._files: OrderedDict[str, Path] = OrderedDict()
        self._directory: Path | None = None

    def directory(self) -> Path:
        with self._guard:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="swarmwatch-videos-"))
            return self._directory

    def get(self, key: str) -> Path | None:
        with self._guard:
            path = self._files.get(key)
            if path is not None and path.is_file():
                self._files.move_to_end(key)
                return path
            return None

    def put(self, key: str, path: Path) -> None:
        with self._guard:
            self._files[key] = path
            self._files.move_to_end(key)
            while len(self._files) > self.keep:
                _, old = self._files.popitem(last=False)
                old.unlink(missing_ok=True)

    def close(self) -> None:
        with self._guard:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
            self._files.clear()


def renders_of(request: Request) -> VideoRenders:
    state = request.app.state
    with _STATE_LOCK:
        renders: VideoRenders | None = getattr(state, "video_renders", None)
        if renders is None:
            renders = state.video_renders = VideoRenders()
    return renders


@router.get(
    "/{study_id}/video.mp4",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "H.264 MP4, 1280x720"},
        503: {"description": "another video is being rendered, or no Chromium/ffmpeg here"},
    },
)
def study_video(
    request: Request,
    study: ReadableStudyDep,
    interval: Annotated[
        int,
        Query(
            description=f"seconds, one of {FRAME_INTERVALS}",
            json_schema_extra={"enum": list(FRAME_INTERVALS)},
        ),
    ] = 3600,
    res: Annotated[int, Query(ge=min(FRAME_RESOLUTIONS), le=max(FRAME_RESOLUTIONS))] = 4,
    metric: Annotated[str, Query(pattern="^(absolute|per_capita)$")] = "absolute",
    title: Annotated[str | None, Query(max_length=300, description="title id or name")] = None,
) -> Response:
    """The study's time-lapse map as an MP4 video (published, k-suppressed frames)."""
    if interval not in FRAME_INTERVALS:
        raise HTTPException(status_code=422, detail=f"interval must be one of {FRAME_INTERVALS}")
    database = request.app.state.database
    try:
        data = timelapse_data(
            database, study.id, interval=interval, res=res, title=title, metric=metric
        )
    except TimelapseError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    if not data["frames"]:
        raise HTTPException(status_code=404, detail="the study has no published frames yet")
    if len(data["frames"]) > MAX_WEB_FRAMES:
        raise HTTPException(
            status_code=422,
            detail=f"{len(data['frames'])} frames: the web renders at most {MAX_WEB_FRAMES}; "
            "use daily frames or `swarmwatch video --from/--to`",
        )
    # The video shows exactly this: the same published frames give the same file.
    shown = {k: data[k] for k in ("study", "interval", "res", "metric", "cells", "frames")}
    key = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()
    renders = renders_of(request)
    filename = f"swarmwatch-study{study.id}-{metric}.mp4"
    headers = {"X-Swarmwatch-Video": "cached", "Cache-Control": "no-cache"}
    kept = renders.get(key)
    if kept is not None:
        return FileResponse(kept, media_type="video/mp4", filename=filename, headers=headers)
    if not renders.rendering.acquire(blocking=False):
        raise HTTPException(
            status_code=503,
            detail="another video is being rendered; retry in a minute",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        kept = renders.get(key)  # rendered by the request that held the lock
        if kept is None:
            path = renders.directory() / f"{key[:32]}.mp4"
            render_video_data(data, path, size=WEB_VIDEO_SIZE, fps=WEB_VIDEO_FPS)
            renders.put(key, path)
            kept = path
            headers["X-Swarmwatch-Video"] = "rendered"
    except VideoError as exc:
        log.warning("video of study %d not rendered: %s", study.id, exc)
        raise HTTPException(status_code=503, detail=f"cannot render a video here: {exc}") from None
    finally:
        renders.rendering.release()
    return FileResponse(kept, media_type="video/mp4", filename=filename, headers=headers)


__all__ = ["MAX_WEB_FRAMES", "WEB_VIDEO_SIZE", "VideoRenders", "router"]
