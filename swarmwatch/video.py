"""`swarmwatch video`: the time-lapse as a video file for a talk, a paper or a press release.

Every frame is the web map itself (the page of swarmwatch.timelapse, in its video
layout: title, clock, legends, credits, no controls) screenshotted in Debian's
headless Chromium, piped into ffmpeg: H.264 MP4 (yuv420p, plays in browsers and
slide software), VP9 WebM or a palette GIF, chosen by the file's suffix.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from swarmwatch.store import Database
from swarmwatch.timelapse import READY, TimelapseError, chromium_page, render_html, timelapse_data

log = logging.getLogger(__name__)

#: 1080p: what projectors and video sites expect.
DEFAULT_SIZE = (1920, 1080)
#: Four hourly frames a second: alpha60's five days in 30 s.
DEFAULT_FPS = 4.0
#: Bounds that keep one render's cost (Chromium + ffmpeg) within minutes.
MAX_SIDE = 3840
MIN_SIDE = 200
MAX_FPS = 60.0
#: The page is laid out at this CSS width and scaled up (device pixel ratio) to the
#: video's size, so text and legends keep their proportions at 720p, 1080p or 4K.
LAYOUT_WIDTH = 1280
#: ffmpeg's encoder and options per container; yuv420p because browsers and slide
#: software do not play H.264 in 4:4:4, and faststart so a browser plays while downloading.
FORMATS: dict[str, list[str]] = {
    ".mp4": [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "20",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
    ],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "0", "-crf", "32"],
    # One palette for the whole film, then dithered: readable text at GIF's 256 colours.
    ".gif": [],
}
FFMPEG = "ffmpeg"


class VideoError(TimelapseError):
    """The video cannot be made: bad options, no frames, no Chromium or no ffmpeg."""


@dataclass(frozen=True, slots=True)
class VideoResult:
    path: Path
    frames: int
    width: int
    height: int
    fps: float

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080); both even (H.264 in yuv420p needs even sides)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise VideoError(f"size must be WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}") from None
    check_size(width, height)
    return width, height


def check_size(width: int, height: int) -> None:
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise VideoError(f"size must be between {MIN_SIDE} and {MAX_SIDE} pixels a side")
    if width % 2 or height % 2:
        raise VideoError("width and height must be even (H.264 in yuv420p)")


def video_format(out: Path) -> list[str]:
    args = FORMATS.get(out.suffix.lower())
    if args is None:
        raise VideoError(f"the file must end in one of {', '.join(FORMATS)}, got {out.name!r}")
    return args


def encoder_args(out: Path, width: int, height: int) -> list[str]:
    """ffmpeg's output options: exactly width x height (a screenshot scaled by a
    fractional pixel ratio can be a pixel off), then the container's encoder."""
    args = video_format(out)
    size = f"scale={width}:{height}:flags=lanczos"
    if out.suffix.lower() == ".gif":
        graph = f"[0:v]{size},split[a][b];[a]palettegen[p];[b][p]paletteuse"
        return ["-filter_complex", graph]
    return ["-vf", size, *args]


def select_frames(
    data: dict[str, Any], start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    """The time-lapse limited to frames starting in [start, end)."""
    if start is None and end is None:
        return data
    kept = []
    for frame in data["frames"]:
        t = datetime.fromisoformat(str(frame["t"]).replace("Z", "+00:00"))
        if (start is None or t >= start) and (end is None or t < end):
            kept.append(frame)
    return {**data, "frames": kept}


def render_video(
    db: Database,
    study_id: int,
    out_path: str | Path,
    *,
    interval: int = 3600,
    res: int = 4,
    metric: str = "absolute",
    title: str | None = None,
    heading: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> VideoResult:
    """Render the study's time-lapse to `out_path` (.mp4, .webm or .gif); see the module doc.

    `title` filters by the study's title (as the API's title=); `heading` replaces the
    study's name at the top of the picture. `progress(done, total)` after each frame.
    """
    out = Path(out_path)
    video_format(out)
    check_size(*size)
    if not 0 < fps <= MAX_FPS:
        raise VideoError(f"fps must be in (0, {MAX_FPS:g}]")
    if metric not in ("absolute", "per_capita"):
        raise VideoError("metric must be absolute or per_capita")
    from swarmwatch.store.rollups import FRAME_INTERVALS, FRAME_RESOLUTIONS

    if interval not in FRAME_INTERVALS:
        raise VideoError(f"interval must be one of {', '.join(map(str, FRAME_INTERVALS))}")
    if res not in FRAME_RESOLUTIONS:
        raise VideoError(f"res must be one of {', '.join(map(str, FRAME_RESOLUTIONS))}")
    if shutil.which(FFMPEG) is None:
        raise VideoError("ffmpeg is missing: apt-get install ffmpeg")
    data = timelapse_data(db, study_id, interval=interval, res=res, title=title, metric=metric)
    data = select_frames(data, start, end)
    return render_video_data(data, out, heading=heading, fps=fps, size=size, progress=progress)


def render_video_data(
    data: dict[str, Any],
    out: Path,
    *,
    heading: str | None = None,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> VideoResult:
    """Render a time-lapse as swarmwatch.timelapse.timelapse_data gives it; see render_video."""
    study_id = int(data["study"]["id"])
    if not data["frames"]:
        raise VideoError(f"study {study_id} has no published frames in that window")
    data = {**data, "video": {"heading": heading or data["study"]["name"]}}
    width, height = size
    encoder = encoder_args(out, width, height)
    scale = width / LAYOUT_WIDTH
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swarmwatch-video-") as tmp:
        page_file = Path(tmp) / "timelapse.html"
        page_file.write_text(render_html(data), encoding="utf-8")
        command = [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "image2pipe",
            "-framerate",
            f"{fps:g}",
            "-c:v",
            "png",
            "-i",
            "-",
            *encoder,
            "-frames:v",
            str(len(data["frames"])),
            str(out),
        ]
        with chromium_page(round(width / scale), round(height / scale), scale) as page:
            page.goto(page_file.resolve().as_uri())
            page.wait_for_function(READY, timeout=300_000)
            count = int(page.evaluate("window.swarmwatchMap.frameCount"))
            # ffmpeg's messages go to a file: a pipe nobody reads could fill and stall it.
            errors = Path(tmp) / "ffmpeg.log"
            with errors.open("wb") as log_file:
                encoder_proc = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log_file
                )
            assert encoder_proc.stdin is not None
            try:
                for i in range(count):
                    page.evaluate("(i) => window.swarmwatchMap.showFrame(i)", i)
                    encoder_proc.stdin.write(page.screenshot(type="png"))
                    progress(i + 1, count)
                encoder_proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped: its exit status and message say why
            except BaseException:
                encoder_proc.kill()
                encoder_proc.wait()
                out.unlink(missing_ok=True)
                raise
            returncode = encoder_proc.wait()
        if returncode != 0:
            out.unlink(missing_ok=True)
            lines = errors.read_text(errors="replace").strip().splitlines()
            raise VideoError(f"ffmpeg failed: {lines[-1] if lines else returncode}")
    log.info("video of study %d: %d frames, %dx%d -> %s", study_id, count, width, height, out)
    return VideoResult(out, count, width, height, fps)


def probe(path: Path) -> dict[str, Any]:
    """What ffprobe reads from a video: the first stream's codec, size, frames, duration."""
    answer = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames,avg_frame_rate:format=duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(answer.stdout)
    return parsed


__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_SIZE",
    "FORMATS",
    "VideoError",
    "VideoResult",
    "check_size",
    "parse_size",
    "probe",
    "encoder_args",
    "render_video",
    "render_video_data",
    "select_frames",
]
