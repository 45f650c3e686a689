"""The `swarmwatch` command: serve, crawl, demo, db, apikey, study, torrent, export, video, bench.

Each command is a thin shell over library functions; errors are one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import typer
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session

from swarmwatch import __version__, access, registry
from swarmwatch.auth import (
    ApiKeyError,
    create_api_key,
    hash_key,
    list_api_keys,
    revoke_api_key,
)
from swarmwatch.config import Settings, get_settings
from swarmwatch.store import Database
from swarmwatch.store.database import is_empty
from swarmwatch.store.models import ApiKey, Study

if TYPE_CHECKING:
    from fastapi import FastAPI

    from swarmwatch.analysis.caches import AnalysisCaches

app = typer.Typer(
    help="swarmwatch: measure where the people in BitTorrent swarms are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for the write endpoints.", no_args_is_help=True)
study_app = typer.Typer(help="Studies: the unit of analysis and of privacy.", no_args_is_help=True)
torrent_app = typer.Typer(help="Register the torrents a study watches.", no_args_is_help=True)
secret_app = typer.Typer(
    help="The deployment secret that wraps study keys (kept outside the database).",
    no_args_is_help=True,
)
from swarmwatch.pipeline.cli import (  # noqa: E402  (the pipeline's commands, mounted here)
    geoip_app,
    ingest_command,
    places_app,
    study_seal_command,
)

app.add_typer(db_app, name="db")
app.add_typer(geoip_app, name="geoip")
app.add_typer(places_app, name="places")
app.command("ingest")(ingest_command)
study_app.command("seal")(study_seal_command)
app.add_typer(apikey_app, name="apikey")
app.add_typer(study_app, name="study")
app.add_typer(torrent_app, name="torrent")
app.add_typer(secret_app, name="secret")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def open_database(
    settings: Settings | None = None, *, upgrade: bool = True, places: bool = False
) -> Database:
    """The configured database, migrated to the current schema (and with GeoNames places)."""
    settings = settings or get_settings()
    try:
        db = Database(settings.database_url)
        if upgrade:
            db.upgrade()
    except Exception as exc:  # a bad URL or an unreachable server: one line, not a traceback
        fail(f"cannot open database {settings.database_url!r}: {type(exc).__name__}: {exc}")
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # close the pool when the command ends, however it ends
        ctx.call_on_close(db.dispose)
    if places:
        ensure_places(db)
    return db


def ensure_places(db: Database) -> None:
    """Cities and metro areas from GeoNames, loaded once (rankings need their names)."""
    from swarmwatch.pipeline.places import load_places

    with err.status("loading GeoNames cities and metro areas (first run only)..."):
        loaded = load_places(db)
    if loaded.loaded:
        err.print(f"loaded {loaded.cities:,} cities and {loaded.metros:,} metro areas")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO: announce URLs are noise, not news.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()


# --- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema of SWARMWATCH_DATABASE_URL to the latest version."""
    settings = get_settings()
    open_database(settings, places=True)
    out.print(f"database at {settings.database_url} is up to date")


# --- apikey -------------------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")] = "default",
    admin: Annotated[
        bool, typer.Option("--admin", help="May read and change every study (CLI only).")
    ] = False,
) -> None:
    """Make a new API key and print it once; only its hash is stored."""
    db = open_database()
    with db.session() as session:
        key = create_api_key(session, name, admin=admin)
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).one()
    out.print(key, soft_wrap=True)
    err.print(f"API key {key_id}{' (admin)' if admin else ''}: store it now, it is not shown again")


@apikey_app.command("list")
def apikey_list() -> None:
    """Every API key: id, prefix, name, admin or not, created, revoked (never the key)."""
    db = open_database()
    with db.session() as session:
        rows = [
            f"{k.id}\t{k.prefix}…\t{k.name}\t{'admin' if k.admin else 'key'}\t"
            f"{k.created_at:%Y-%m-%d %H:%M}\t"
            f"{'revoked ' + format(k.revoked_at, '%Y-%m-%d %H:%M') if k.revoked_at else 'active'}"
            for k in list_api_keys(session)
        ]
    out.print("id\tprefix\tname\tkind\tcreated\tstate")
    for row in rows:
        out.print(row)


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (apikey list).")],
) -> None:
    """Revoke a key for good: its next request is refused (401/403)."""
    db = open_database()
    try:
        with db.session() as session:
            revoke_api_key(session, key_id)
    except ApiKeyError as exc:
        fail(str(exc))
    out.print(f"API key {key_id} revoked")


# --- secret -------------------------------------------------------------------------------


@secret_app.command("create")
def secret_create(
    path: Annotated[Path, typer.Argument(help="The file to write (must not exist).")],
) -> None:
    """Write a new random deployment secret to PATH with mode 0600.

    Point SWARMWATCH_SECRET_FILE at it for every crawler and ingest process. Keep it
    out of the database's backups: with it, a copy of the database can link peers.
    """
    from swarmwatch.custody import write_secret_file

    try:
        write_secret_file(path)
    except OSError as exc:
        fail(f"cannot create {path}: {exc.strerror}")
    out.print(f"export SWARMWATCH_SECRET_FILE={path.resolve()}")


@secret_app.command("rotate")
def secret_rotate(
    new_file: Annotated[
        Path, typer.Option("--new-file", help="The new secret (from `secret create`).")
    ],
) -> None:
    """Wrap every study key with a new secret (the current one is SWARMWATCH_SECRET_FILE).

    Then point every worker at the new file and destroy the old one: backups made
    before the rotation can then no longer be unwrapped, sealed studies included.
    """
    from swarmwatch.custody import CustodyError, KeyCustody
    from swarmwatch.pipeline.anonymise import rewrap_keys

    settings = get_settings()
    db = open_database(settings)
    try:
        old = KeyCustody.from_settings(settings)
        new = KeyCustody.from_settings(
            settings.model_copy(update={"secret_file": str(new_file), "secret": None})
        )
        with db.session() as session:
            count = rewrap_keys(session, old, new)
    except CustodyError as exc:
        fail(f"cannot rotate: {exc}")
    out.print(
        f"{count} study keys now wrapped with secret {new.secret_id}: set "
        f"SWARMWATCH_SECRET_FILE={new_file.resolve()} everywhere and destroy the old secret"
    )


def require_custody(settings: Settings, db: Database) -> None:
    """Refuse to crawl or ingest without this database's deployment secret (one line, exit 1)."""
    from swarmwatch.custody import CustodyError, KeyCustody
    from swarmwatch.pipeline.anonymise import check_custody

    try:
        custody = KeyCustody.from_settings(settings)
        with db.session() as session:
            check_custody(session, custody)
    except CustodyError as exc:
        fail(f"refusing to crawl or ingest: {exc}")


# --- study --------------------------------------------------------------------------------


@study_app.command("create")
def study_create(
    name: Annotated[str, typer.Argument(help="A unique name for the study.")],
    description: Annotated[str, typer.Option(help="What the study is about.")] = "",
    k: Annotated[
        int | None, typer.Option("--k", min=1, help="k-anonymity threshold (default 5).")
    ] = None,
    private: Annotated[bool, typer.Option(help="Reads need an API key.")] = False,
    title: Annotated[
        list[str] | None, typer.Option("--title", help="A title (work) to count; repeatable.")
    ] = None,
    owner: Annotated[
        int | None,
        typer.Option(help="Id of the API key that owns it (default: none, admin keys only)."),
    ] = None,
) -> None:
    """Create a study and print its id; its secret peer-key is made by the first crawl."""
    for text, what in ((name, "NAME"), (description, "--description")):
        _check_text(text, what)
    for text in title or []:
        _check_text(text, "--title")
    settings = get_settings()
    db = open_database(settings)
    try:
        with db.session() as session:
            study = registry.create_study(
                session,
                name,
                description=description,
                k_threshold=k or settings.k_threshold_default,
                private=private,
                titles=title or [],
            )
            study_id = study.id
            if owner is not None:
                access.set_owner(session, study, owner)
    except (registry.RegistryError, access.AccessError) as exc:
        fail(str(exc))
    out.print(f"study {study_id} created: {name}")


def _study_access(study_id: int, change: Callable[[Session, Study], str]) -> None:
    db = open_database()
    try:
        with db.session() as session:
            study = registry.get_study(session, study_id)
            message = change(session, study)
    except (registry.RegistryError, access.AccessError) as exc:
        fail(str(exc))
    out.print(message)


@study_app.command("grant")
def study_grant(
    study_id: Annotated[int, typer.Argument(help="The study's id.")],
    key: Annotated[int, typer.Option("--key", help="The API key's id (apikey list).")],
    role: Annotated[str, typer.Option(help="read, or write (read and write).")] = "read",
) -> None:
    """Give an API key read or write on a study (what its owner does with the API)."""
    _study_access(
        study_id,
        lambda s, study: (
            f"API key {access.grant(s, study, key, role).api_key_id} may {role} study {study.id}"
        ),
    )


@study_app.command("ungrant")
def study_ungrant(
    study_id: Annotated[int, typer.Argument(help="The study's id.")],
    key: Annotated[int, typer.Option("--key", help="The API key's id.")],
) -> None:
    """Take an API key's grant on a study away."""

    def change(session: Session, study: Study) -> str:
        access.ungrant(session, study, key)
        return f"API key {key} has no grant on study {study.id} any more"

    _study_access(study_id, change)


@study_app.command("owner")
def study_owner(
    study_id: Annotated[int, typer.Argument(help="The study's id.")],
    key: Annotated[
        int | None, typer.Option("--key", help="The new owner's key id (omit: admin keys only).")
    ] = None,
) -> None:
    """Hand a study to another API key (e.g. studies made before ownership existed)."""

    def change(session: Session, study: Study) -> str:
        access.set_owner(session, study, key)
        return f"study {study.id} is owned by " + (f"API key {key}" if key else "admin keys only")

    _study_access(study_id, change)


# --- torrent ------------------------------------------------------------------------------


@torrent_app.command("add")
def torrent_add(
    source: Annotated[
        str, typer.Argument(help="A magnet URI, a hex/base32 infohash, or a .torrent file path.")
    ],
    study: Annotated[int, typer.Option("--study", help="The study's id.")],
    title: Annotated[str | None, typer.Option(help="The title (work) it is a release of.")] = None,
    tracker: Annotated[
        list[str] | None, typer.Option("--tracker", help="Extra announce URL; repeatable.")
    ] = None,
) -> None:
    """Register a torrent in a study by magnet, infohash or .torrent file."""
    _check_text(title, "--title")
    try:
        if source.startswith("magnet:"):
            parsed = registry.parse_magnet(source)
        elif Path(source).is_file():
            parsed = registry.parse_torrent_file(Path(source).read_bytes())
        else:
            parsed = registry.parse_infohash(source)
        extra = registry.parse_tracker_list(tracker or [])
    except registry.RegistryInputError as exc:
        fail(str(exc))
    db = open_database()
    try:
        with db.session() as session:
            t = registry.register_torrent(session, study, parsed, title=title, extra_trackers=extra)
            info = {"infohash": t.infohash, "study_id": t.study_id, "name": t.name}
    except registry.RegistryError as exc:
        fail(str(exc))
    out.print(json.dumps(info))


# --- export -------------------------------------------------------------------------------


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"{option} must be an ISO date or time (2017-07-17 or 2017-07-17T03:00Z), got {value!r}"
        )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_text(value: str | None, what: str) -> None:
    """Text from the command line that a database can store: argv bytes that are not
    UTF-8 reach Python as lone surrogates, which no driver can encode (a traceback)."""
    if value is not None and ("\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)):
        fail(f"{what} must be UTF-8 text (the shell passed bytes that are not)")


@app.command()
def export(
    study: Annotated[int, typer.Option("--study", help="The study's id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write into.")] = Path(
        "export"
    ),
    title: Annotated[str | None, typer.Option(help="Only this title.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Window start (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Window end (UTC, ISO).")] = None,
    vantage: Annotated[str | None, typer.Option(help="Only this vantage point.")] = None,
    res: Annotated[int, typer.Option(help="H3 resolution of the cell files.")] = 4,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact", help="True counts, as the study's owner reads them (not for publication)."
        ),
    ] = False,
) -> None:
    """Write a study's rankings (CSV per level, rankings.json sidecar) and GeoJSON for a paper.

    The same files and columns as the API's exports, with the public's protection
    (cell-key noise, nothing below k) unless --exact.
    """
    from swarmwatch.analysis.export import export_study

    db = open_database()
    try:
        paths = export_study(
            db,
            study,
            out_dir,
            title=title,
            start=_parse_time(start, "--from"),
            end=_parse_time(end, "--to"),
            vantage=vantage,
            res=res,
            exact=exact,
        )
    except (LookupError, ValueError) as exc:  # UnsafeTarget (a symlink, a file) among them
        fail(str(exc).strip("'\""))
    except OSError as exc:
        fail(f"cannot write to {out_dir}: {exc.strerror or type(exc).__name__}")
    for path in paths:
        out.print(str(path))


# --- video --------------------------------------------------------------------------------


@app.command()
def video(
    study: Annotated[int, typer.Option("--study", help="The study's id.")],
    out_file: Annotated[
        Path, typer.Option("--out", help="Video file: .mp4 (H.264), .webm (VP9) or .gif.")
    ] = Path("timelapse.mp4"),
    interval: Annotated[int, typer.Option(help="Frame length in seconds: 3600 or 86400.")] = 3600,
    res: Annotated[int, typer.Option(help="H3 resolution of the hexagons (3-5).")] = 4,
    metric: Annotated[str, typer.Option(help="absolute or per_capita.")] = "absolute",
    start: Annotated[str | None, typer.Option("--from", help="First frame (UTC, ISO).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End of the last frame (UTC).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second of the video.")] = 4.0,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT in pixels.")] = "1920x1080",
    heading: Annotated[
        str | None, typer.Option("--title", help="Heading (default: the study's name).")
    ] = None,
    title_filter: Annotated[
        str | None, typer.Option("--only-title", help="Only this title of the study.")
    ] = None,
) -> None:
    """Render a study's time-lapse map as a video (Chromium + ffmpeg), with clock, legends
    and credits: the published (k-suppressed) frames, as the web map draws them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from swarmwatch.timelapse import TimelapseError
    from swarmwatch.video import parse_size, render_video

    try:
        width, height = parse_size(size)
    except TimelapseError as exc:
        fail(str(exc))
    begin, finish = _parse_time(start, "--from"), _parse_time(end, "--to")
    db = open_database()
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress("rendering frames", *columns, console=err, transient=True) as bar:
        task = bar.add_task("frames", total=None)
        try:
            result = render_video(
                db,
                study,
                out_file,
                interval=interval,
                res=res,
                metric=metric,
                title=title_filter,
                heading=heading,
                start=begin,
                end=finish,
                fps=fps,
                size=(width, height),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except TimelapseError as exc:
            fail(str(exc))
    out.print(
        f"{result.path}: {result.frames} frames, {result.width}x{result.height}, "
        f"{result.fps:g} fps, {result.duration:.1f} s"
    )


# --- bench --------------------------------------------------------------------------------


def _bench_package() -> ModuleType:
    """The top-level bench/ package of the source checkout this swarmwatch was installed from.

    Benchmarks are no part of the runtime package (the wheel does not ship them), so an
    installed wheel answers with one line saying what is needed instead of a traceback.
    """
    import importlib

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__init__.py").is_file():
        fail(
            "swarmwatch bench needs a source checkout: the benchmarks live in its bench/ "
            "folder, which the wheel does not ship (pip install -e '.[test]' from the repository)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("bench")


def _bench_names() -> list[str]:
    import pkgutil

    package = _bench_package()
    helpers = set(getattr(package, "HELPERS", ()))
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in helpers)


def _option_value(raw: str) -> object:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def bench(
    name: Annotated[str, typer.Argument(help="Which benchmark: run `swarmwatch bench list`.")],
    options: Annotated[
        list[str] | None,
        typer.Argument(help="Options as key=value (e.g. scale=0.01 seconds=5)."),
    ] = None,
) -> None:
    """Run a benchmark; it prints its figures beside a baseline measured in the same run.

    Benchmarks: tracker, dht, ingest, query, browser, load (those present in this build).
    Everything runs on loopback against simulated or synthetic data.
    """
    import importlib

    names = _bench_names()
    if name == "list":
        out.print("\n".join(names))
        return
    if name not in names:
        fail(f"unknown benchmark {name!r}; available: {', '.join(names)}")
    kwargs: dict[str, object] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"benchmark options are key=value, got {item!r}")
        kwargs[key.replace("-", "_")] = _option_value(raw)
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:  # a test extra (playwright, pandas ...)
        fail(f"benchmark {name} needs the Python package {exc.name}: pip install -e '.[test]'")
    # What else it needs (a browser, a load generator), said in one line before it starts.
    missing = getattr(module, "missing", None)
    need = missing() if missing is not None else None
    if need:
        fail(f"benchmark {name} needs {need}")
    try:
        figures = module.run_benchmark(**kwargs)
    except TypeError as exc:
        fail(f"bad options for benchmark {name}: {exc}")
    out.print(json.dumps(figures, indent=2, default=str))


# --- serve --------------------------------------------------------------------------------


def server_caches() -> AnalysisCaches:
    """The analysis caches of a `serve` process, which settle with gc.freeze().

    A refreshed ranking or a warmed time-lapse is hundreds of thousands of long-lived
    objects; each full (generation 2) collection walks all of them with every thread
    stopped, and the allocations of the next refresh trigger one: 0.3-0.8 s pauses of
    every request in flight at 5 % scale, measured while ingest ran. Frozen objects are
    still freed by reference counting when an answer is replaced (the cached answers
    hold no reference cycles). Freezing is a decision about the whole process, so it
    is made here, by the process that serves, not by the analysis library.
    """
    import gc

    from swarmwatch.analysis.caches import AnalysisCaches
    from swarmwatch.store.keptframes import PersistedFrames

    return AnalysisCaches(settle=gc.freeze, persisted=PersistedFrames())


#: Set by `swarmwatch serve --workers N` to its own pid for its uvicorn worker processes.
SUPERVISOR_PID_ENV = "SWARMWATCH_SUPERVISOR_PID"


def server_app() -> FastAPI:
    """create_app() for each `serve --workers N` process (uvicorn's factory). It ends with
    the serve process however that ends: uvicorn's workers outlived a SIGKILLed supervisor."""
    import os

    from swarmwatch.api import create_app
    from swarmwatch.parentwatch import exit_with_parent

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor:
        exit_with_parent(int(supervisor))
    return create_app(caches=server_caches())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    crawl: Annotated[
        bool, typer.Option("--crawl/--no-crawl", help="Run the crawlers in this process too.")
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes sharing the port (needs --no-crawl). Each keeps its own "
            "rate-limit buckets and answer cache: a client may get up to N times the limits.",
        ),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve the API and the web map (and, unless --no-crawl, crawl the registered torrents).

    Uses SQLite ./swarmwatch.db unless SWARMWATCH_DATABASE_URL says otherwise, and
    creates or migrates the schema first. No access log: it would record client addresses.
    """
    import uvicorn

    from swarmwatch.api import create_app

    if workers > 1 and crawl:
        fail("--workers needs --no-crawl: run crawlers with `swarmwatch crawl` instead")
    setup_logging(verbose)
    settings = get_settings()
    db = open_database(settings, upgrade=False)
    if is_empty(db.engine):
        err.print("empty database: creating the schema")
    db.upgrade()
    if crawl:  # before the minute of loading places, not after
        require_custody(settings, db)
    ensure_places(db)
    log_level = "debug" if verbose else "info"
    if workers > 1:
        import os

        db.dispose()  # each worker process opens its own pool
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the workers end with this process
        uvicorn.run(
            "swarmwatch.cli:server_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
        )
        return
    application = create_app(settings, db, server_caches())
    if crawl:
        from swarmwatch.service import attach_crawl_service

        attach_crawl_service(application, settings, db)
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@app.command()
def crawl(
    vantage: Annotated[
        str | None, typer.Option(help="This worker's vantage name (default: settings).")
    ] = None,
    crawlers: Annotated[
        str, typer.Option(help="Comma-separated crawlers to run: tracker,dht,swarm.")
    ] = "tracker,dht,swarm",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run crawler workers only (no API): any number, on any machines, sharing one database.

    Swarms are leased per vantage point, so workers of one vantage split the work
    and take over a dead worker's swarms. SIGTERM or Ctrl-C flushes what was
    accepted to the database before exiting.
    """
    import asyncio
    import signal

    from swarmwatch.service import CrawlService, build_crawlers

    setup_logging(verbose)
    settings = get_settings()
    if vantage:
        settings = settings.model_copy(update={"vantage": vantage})
    db = open_database(settings)
    require_custody(settings, db)  # before the minute of loading places, not after
    ensure_places(db)
    names = [n.strip() for n in crawlers.split(",") if n.strip()]
    try:
        built = build_crawlers(settings, db, names)
    except ValueError as exc:
        fail(str(exc))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = CrawlService(settings, db, crawlers=built)
        err.print(
            f"crawling as vantage {settings.vantage!r} (worker {service.worker_id}) with "
            f"{', '.join(names)}; loopback_only={settings.loopback_only}"
        )
        await service.run(stop)
        stats = service.pipeline.stats.as_dict() if service.pipeline else {}
        err.print(f"stopped; pipeline: {stats}")

    asyncio.run(main())


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the map and API (0: any free port).")] = 8000,
    peers: Annotated[
        int, typer.Option(min=100, help="Simulated arrivals per simulated day.")
    ] = 20_000,
    torrents: Annotated[int, typer.Option(min=1, max=100, help="Simulated torrents.")] = 6,
    speed: Annotated[
        float,
        typer.Option(min=1.0, help="Simulated seconds per wall second (1440: a day a minute)."),
    ] = 1440.0,
    db_path: Annotated[
        Path, typer.Option("--db", help="SQLite file for the demo (replaced on each run).")
    ] = Path("swarmwatch-demo.db"),
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many wall seconds (default: Ctrl-C).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Crawl a SIMULATED swarm on loopback with the real crawlers, and serve the live map.

    Starts simulated HTTP/UDP trackers and DHT nodes, registers their torrents
    through the REST API, runs the tracker and DHT crawlers and the pipeline under
    a compressed clock, and prints the URL. Nothing leaves loopback.
    """
    import asyncio
    import signal

    from swarmwatch.demo import banner, run_demo

    setup_logging(verbose)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    secret_file = demo_secret(db_path)
    settings = get_settings().model_copy(
        update={
            "database_url": f"sqlite:///{db_path.resolve()}",
            "loopback_only": True,
            "secret_file": str(secret_file.resolve()),
            "secret": None,
        }
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await run_demo(
            settings,
            port=port,
            peers=peers,
            torrents=torrents,
            speed=speed,
            stop=stop,
            on_ready=lambda info: out.print(banner(info, peers=peers, speed=speed)),
            progress=lambda message: err.print(f"[dim]{message}[/]"),
        )

    try:
        asyncio.run(main())
    except OSError as exc:
        fail(f"cannot start the demo: {exc}")


def demo_secret(db_path: Path) -> Path:
    """The demo's own deployment secret: a new 0600 file beside its database, replaced with it.

    The demo runs out of the box and still never stores a study key in usable form.
    """
    from swarmwatch.custody import write_secret_file

    path = Path(f"{db_path}.secret")
    path.unlink(missing_ok=True)
    write_secret_file(path)
    return path


def run() -> None:
    app()


if __name__ == "__main__":
    run()
