"""Pipeline commands: `ingest FILE`, `geoip info|install`, `study seal`, `places load`.

Thin typer wrappers over plain functions; swarmwatch/cli.py mounts them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from swarmwatch.config import get_settings
from swarmwatch.custody import CustodyError
from swarmwatch.pipeline.anonymise import StudyError, seal_study
from swarmwatch.pipeline.geoipdb import (
    GeoipError,
    download_city_database,
    geoip_info,
    install_file,
)
from swarmwatch.pipeline.places import load_places
from swarmwatch.pipeline.replay import ReplayReport, ingest_file
from swarmwatch.pipeline.urban_areas import UrbanAreaTableError, load_urban_areas
from swarmwatch.store import Database
from swarmwatch.store.ingestlock import IngestBusy

console = Console(stderr=True)

geoip_app = typer.Typer(help="GeoIP databases: what is loaded, and installing a current one.")
study_app = typer.Typer(help="Study lifecycle (pipeline side).")
places_app = typer.Typer(help="GeoNames cities and metro areas, or your own urban areas.")


def _database() -> Database:
    db = Database(get_settings().database_url)
    db.upgrade()
    return db


def ingest_command(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL: ip, port, infohash, time, source")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: guess)")
    ] = None,
    vantage: Annotated[str, typer.Option(help="vantage for rows that name none")] = "replay",
    keep_frames: Annotated[
        bool,
        typer.Option(
            help="end by building the map's time-lapse of the latest studies and keeping it "
            "in the database, so the next server start answers the map at once",
        ),
    ] = True,
) -> None:
    """Replay sightings collected elsewhere through the pipeline."""
    db = _database()
    try:
        try:
            report: ReplayReport = ingest_file(file, db, fmt=fmt, vantage=vantage)
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        except CustodyError as exc:  # no study key is made or used without the secret
            console.print(f"[red]refusing to ingest: {exc}[/red]", soft_wrap=True)
            raise typer.Exit(1) from None
        except IngestBusy as exc:
            console.print(f"[red]refusing to ingest: {exc}[/red]", soft_wrap=True)
            raise typer.Exit(1) from None
        _report(report)
        if keep_frames and report.pipeline.get("stored", 0):
            _keep_frames(db)
    finally:
        db.dispose()


def _keep_frames(db: Database) -> None:
    """The map's first question, answered now and kept (analysis.frames.keep_frames)."""
    from swarmwatch.analysis.frames import keep_frames
    from swarmwatch.store.keptframes import PersistedFrames

    typer.echo("building the map's time-lapse for the next server start (--no-keep-frames skips)")
    started = time.perf_counter()
    try:
        keep_frames(db, PersistedFrames())
    except Exception as exc:  # the sightings are stored: only the first start is slower
        console.print(
            f"[yellow]time-lapse not kept ({type(exc).__name__}): the ingest is complete, "
            "and a server builds the time-lapse when it starts[/yellow]",
            soft_wrap=True,
        )
        return
    typer.echo(f"time-lapse kept in {time.perf_counter() - started:.1f} s")


def _report(report: ReplayReport) -> None:
    for error in report.errors:
        console.print(f"[yellow]skipped[/yellow] {error}")
    if report.bad > len(report.errors):
        console.print(f"... and {report.bad - len(report.errors)} more bad lines")
    if report.resumed_lines:
        typer.echo(
            f"resumed after line {report.resumed_lines} ({report.resumed_bytes} bytes): "
            "an earlier run of this file (or of its beginning) stored that far"
        )
    if report.already_stored:
        where = (
            f"the first new one on line {report.first_new_line}"
            if report.first_new_line
            else "nothing new"
        )
        typer.echo(
            f"{report.already_stored} sightings skipped as already counted by an earlier "
            f"ingest; {where}"
        )
    if report.late:
        console.print(
            f"[yellow]{report.late} lines out of time order[/yellow] (older than the minute "
            "before the newest of their swarm, source and vantage): not counted; sort "
            "the file by time and run it again to count them",
            soft_wrap=True,
        )
    stats = report.pipeline
    typer.echo(
        f"{report.accepted} sightings read, {report.bad} bad lines skipped; "
        f"{stats.get('stored', 0)} stored, {stats.get('new_peers', 0)} new peers, "
        f"{stats.get('anomalies', 0)} anomalies, "
        f"{report.repeats + stats.get('coalesced', 0)} repeats, "
        f"{report.already_stored} already counted, {report.late} late, "
        f"{report.unregistered + stats.get('unknown_infohash', 0)} for unregistered torrents, "
        f"{stats.get('sealed', 0)} for sealed studies"
    )
    typer.echo(f"{report.lines} lines in {report.seconds:.1f} s: {report.lines_per_second:,.0f}/s")


@geoip_app.command("info")
def geoip_info_command() -> None:
    """Show the GeoIP databases in use: type, build date, age."""
    try:
        infos = geoip_info()
    except GeoipError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for info in infos:
        typer.echo(
            f"{info.kind}: {info.database_type} at {info.path}\n"
            f"  built {info.build_date:%Y-%m-%d} ({info.age_days:.0f} days ago)"
            f"{', embedded default' if info.embedded else ''}"
        )
        if info.warning:
            console.print(f"[bold red]{info.warning}[/bold red]")


@geoip_app.command("install")
def geoip_install_command(
    file: Annotated[
        Path | None, typer.Option("--file", help="install this local .mmdb instead")
    ] = None,
    source: Annotated[str, typer.Option(help="maxmind, dbip or auto")] = "auto",
) -> None:
    """Download (or take --file) a current City database, verify it, swap it in."""
    try:
        info = install_file(file) if file else download_city_database(source=source)
    except GeoipError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"installed {info.database_type} built {info.build_date:%Y-%m-%d} at {info.path}")


@study_app.command("seal")
def study_seal_command(
    study_id: Annotated[int, typer.Argument(help="the study to seal")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Destroy the study's key: no new sightings, no link to any address, ever."""
    if not yes:
        typer.confirm(f"Seal study {study_id}? Its key is destroyed for good.", abort=True)
    db = _database()
    try:
        with db.session() as session:
            result = seal_study(session, study_id)
        if db.is_sqlite:  # the write-ahead log still holds the key's old page: empty it
            with db.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:  # PostgreSQL keeps the deleted row version until the table is rewritten
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM FULL study_key")
    except StudyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    state = "was already sealed" if result.already_sealed else "sealed"
    typer.echo(f"study {study_id} {state} at {result.sealed_at:%Y-%m-%d %H:%M:%S} UTC")


@places_app.command("load")
def places_load_command(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="urban-area CSV: geoname_id, area_id, name, population, land_area_km2, "
            "population_source, population_year (default: build metros from GeoNames)"
        ),
    ] = None,
) -> None:
    """Load GeoNames cities and metro areas, or replace the metros with your urban areas."""
    db = _database()
    try:
        if file is None:
            loaded = load_places(db)
            verb = "loaded" if loaded.loaded else "already loaded:"
            typer.echo(f"{verb} {loaded.cities} cities, {loaded.metros} metro areas")
            return
        try:
            areas = load_urban_areas(db, file)
        except OSError as exc:
            console.print(f"[red]error: cannot read {file}: {exc.strerror or exc}[/red]")
            raise typer.Exit(2) from None
        except UrbanAreaTableError as exc:
            for error in exc.errors:
                console.print(f"[red]error: {file}: {error}[/red]", soft_wrap=True)
            if exc.total > len(exc.errors):
                console.print(f"[red]error: ... and {exc.total - len(exc.errors)} more[/red]")
            console.print("nothing was loaded")
            raise typer.Exit(2) from None
    finally:
        db.dispose()
    typer.echo(
        f"loaded {areas.areas} urban areas over {areas.cities} cities "
        f"from {'; '.join(areas.sources)}"
    )


__all__ = [
    "geoip_app",
    "ingest_command",
    "places_app",
    "study_app",
    "study_seal_command",
]
