"""`swarmwatch video` and the page's video download: real Chromium, real ffmpeg, checked
with ffprobe (codec, pixel format, size, frame count, duration)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from swarmwatch.cli import app
from swarmwatch.store import Database
from swarmwatch.timelapse import CHROMIUM_PATH
from swarmwatch.video import probe
from tests.web_browser import ARTIFACTS, FRAMES, START, KnownStudy, build_known_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="apt-get install ffmpeg"),
    pytest.mark.skipif(not Path(CHROMIUM_PATH).exists(), reason="apt-get install chromium"),
]
runner = CliRunner()


@pytest.fixture
def known(db: Database) -> KnownStudy:
    return build_known_study(db, name="GoT S07E01 (known swarm)")


def stream(path: Path) -> dict[str, object]:
    info = probe(path)
    first: dict[str, object] = info["streams"][0]
    first["duration"] = float(info["format"]["duration"])
    return first


def test_cli_renders_an_h264_mp4_of_every_frame(known: KnownStudy, tmp_path: Path) -> None:
    out = tmp_path / "talk" / "timelapse.mp4"
    args = ["video", "--study", str(known.id), "--out", str(out), "--size", "640x360"]
    result = runner.invoke(app, [*args, "--fps", "3", "--title", "Where the episode went"])
    assert result.exit_code == 0, result.output
    assert f"{FRAMES} frames, 640x360, 3 fps, 2.0 s" in result.output
    video = stream(out)
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (640, 360)
    assert int(str(video["nb_read_frames"])) == FRAMES
    assert video["duration"] == pytest.approx(FRAMES / 3, abs=0.01)
    # A still of the last frame, for a human to look at (CI keeps artifacts/).
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    still = ARTIFACTS / "video_last_frame.png"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(out)]
        + ["-vf", f"select=eq(n\\,{FRAMES - 1})", "-frames:v", "1", str(still)],
        check=True,
    )
    assert still.stat().st_size > 10_000


@pytest.mark.parametrize(("suffix", "codec"), [(".gif", "gif"), (".webm", "vp9")])
def test_cli_window_size_and_other_containers(
    known: KnownStudy, tmp_path: Path, suffix: str, codec: str
) -> None:
    # --from/--to keep the frames starting inside the window: hours 2 and 3.
    start, end = START + timedelta(hours=2), START + timedelta(hours=4)
    out = tmp_path / f"window{suffix}"
    result = runner.invoke(
        app,
        ["video", "--study", str(known.id), "--out", str(out), "--size", "480x270"]
        + ["--from", start.isoformat(), "--to", end.isoformat(), "--metric", "per_capita"],
    )
    assert result.exit_code == 0, result.output
    video = stream(out)
    assert video["codec_name"] == codec and (video["width"], video["height"]) == (480, 270)
    assert int(str(video["nb_read_frames"])) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "641x360"], "even"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--out", "x.avi"], ".mp4"),
        (["--fps", "0"], "fps"),
        (["--metric", "per_person"], "metric"),
        (["--interval", "60"], "interval"),
        (["--from", "yesterday"], "--from"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    known: KnownStudy, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["video", "--study", str(known.id), "--out", str(tmp_path / "v.mp4"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_unknown_or_empty_study(db: Database, tmp_path: Path) -> None:
    from swarmwatch.registry import create_study

    with db.session() as session:
        empty = create_study(session, "nothing yet", titles=["E1"])
        session.flush()
        empty_id = empty.id
    for study, message in ((424242, "not found"), (empty_id, "no published frames")):
        result = runner.invoke(app, ["video", "--study", str(study), "--out", "x.mp4"])
        assert result.exit_code == 1 and message in result.output, result.output


def test_api_serves_the_video_once_rendered_and_bounds_the_work(
    live_server: str, known: KnownStudy
) -> None:
    url = f"{live_server}/api/v1/studies/{known.id}/video.mp4"
    with httpx.Client(timeout=300) as client:
        first = client.get(url, params={"interval": 3600, "res": 4})
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "video/mp4"
        assert first.headers["x-swarmwatch-video"] == "rendered"
        assert "attachment" in first.headers["content-disposition"]
        # The same published frames: the same file, not a second render.
        again = client.get(url, params={"interval": 3600, "res": 4})
        assert again.headers["x-swarmwatch-video"] == "cached"
        assert again.content == first.content
        for params, status in (
            ({"interval": 60}, 422),
            ({"metric": "bogus"}, 422),
            ({"res": 9}, 422),
        ):
            bad = client.get(url, params=params)
            assert bad.status_code == status and "detail" in bad.json()
        assert client.get(f"{live_server}/api/v1/studies/424242/video.mp4").status_code == 404
    path = Path(ARTIFACTS) / "api_video.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(first.content)
    video = stream(path)
    assert (video["width"], video["height"]) == (1280, 720)
    assert int(str(video["nb_read_frames"])) == FRAMES


def test_api_renders_one_video_at_a_time_and_bounds_its_length(
    db: Database, known: KnownStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmwatch.api import create_app
    from swarmwatch.api.ratelimit import EXPENSIVE_SUFFIXES
    from swarmwatch.api.routes import video
    from swarmwatch.config import get_settings
    from tests.conftest import LiveServer

    assert "/video.mp4" in EXPENSIVE_SUFFIXES  # under the read rate limit
    app_ = create_app(get_settings(), db)
    renders = app_.state.video_renders = video.VideoRenders()
    url = f"/api/v1/studies/{known.id}/video.mp4"
    with LiveServer(app_) as server:
        with renders.rendering:  # a render is running
            busy = httpx.get(server.url + url, timeout=60)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "60"
        assert "another video" in busy.json()["detail"]
        monkeypatch.setattr(video, "MAX_WEB_FRAMES", FRAMES - 1)
        long = httpx.get(server.url + url, timeout=60)
        assert long.status_code == 422 and "swarmwatch video" in long.json()["detail"]


def test_page_offers_the_video_for_download(
    live_server: str, known: KnownStudy, tmp_path: Path
) -> None:
    from tests.web_browser import chromium

    with chromium() as browser:
        page = browser.page
        page.goto(f"{live_server}/?study={known.id}")
        page.wait_for_function(
            "window.swarmwatchMap !== undefined && window.swarmwatchMap.ready", timeout=60_000
        )
        link = page.locator("#video")
        assert link.inner_text() == "Download video (MP4)"
        href = link.get_attribute("href") or ""
        assert href.startswith(f"/api/v1/studies/{known.id}/video.mp4?")
        assert "metric=absolute" in href and "res=4" in href and "interval=3600" in href
        with page.expect_download(timeout=300_000) as download_info:
            link.click()
        saved = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(saved)
    assert saved.name == f"swarmwatch-study{known.id}-absolute.mp4"
    video = stream(saved)
    assert video["codec_name"] == "h264" and int(str(video["nb_read_frames"])) == FRAMES
    assert browser.console_errors == []
