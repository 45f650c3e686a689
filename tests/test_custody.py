"""Key custody (issue 15): a copy of the database alone can neither reverse nor link peers.

The attacker of issue 15 took the database file and the GeoLite2 networks of a
city and hashed every address of them under every key the file held. Here the
same attack runs against a database filled by the real pipeline, and finds
nothing; given the deployment secret too, the same attack recovers every
address (so the harness could fail). Plus: refusals without the secret, the
migration of plaintext keys from 0005, and sealing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import LargeBinary, func, inspect, select, text
from typer.testing import CliRunner

from swarmwatch.cli import app
from swarmwatch.config import Settings, get_settings
from swarmwatch.custody import (
    CustodyError,
    KeyCustody,
    MissingSecret,
    WrongSecret,
    read_secret,
    write_secret_file,
)
from swarmwatch.pipeline.anonymise import (
    STUDY_KEY_BYTES,
    StudySealed,
    ensure_study_key,
    peer_key,
    rewrap_keys,
    seal_study,
)
from swarmwatch.pipeline.geolocate import Geolocator, address_key, packed_key
from swarmwatch.pipeline.pipeline import Pipeline
from swarmwatch.pipeline.replay import FileCursor, ingest_file, replay_key
from swarmwatch.store import Database
from swarmwatch.store.database import upgrade_database
from swarmwatch.store.models import Base, DeploymentSecret, Peer, StudyKey
from tests.conftest import TEST_SECRET
from tests.pipeline_fixtures import INFOHASH, register, write_city_db
from tests.test_pipeline_store import sighting

runner = CliRunner()
#: The "withheld city" of the attack: every address of its network is a candidate.
NETWORK = ipaddress.ip_network("81.2.69.0/24")
PEERS = [str(NETWORK[i]) for i in (7, 19, 101, 200, 254)]


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


def crawl(db: Database, city_db: Path, addresses: list[str], **kw: object) -> Pipeline:
    async def go() -> Pipeline:
        geo = Geolocator(city_db, workers=0)
        try:
            async with Pipeline(db, geolocator=geo, batch_size=7, **kw) as p:  # type: ignore[arg-type]
                for at, ip in enumerate(addresses):
                    await p.put(sighting(ip, at=at))
            return p
        finally:
            geo.close()

    return asyncio.run(go())


def db_blobs(db: Database) -> list[bytes]:
    """Every binary value in every table: all the key material a copy of the file holds."""
    out: list[bytes] = []
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name not in inspect(conn).get_table_names():
                continue
            for column in table.columns:
                if isinstance(column.type, LargeBinary):
                    out += [bytes(v) for (v,) in conn.execute(select(column)) if v]
    return out


def attack(candidate_keys: list[bytes], stored: set[bytes]) -> set[str]:
    """Hash every address of NETWORK under every candidate key; the addresses that match."""
    found = set()
    for key in candidate_keys:
        if not 1 <= len(key) <= 64:
            continue
        for ip in NETWORK:
            if peer_key(key, packed_key(address_key(ip))) in stored:
                found.add(str(ip))
    return found


def stored_peer_keys(db: Database) -> set[bytes]:
    with db.session() as s:
        return {bytes(k) for k in s.scalars(select(Peer.peer_key))}


# --- the wrap ------------------------------------------------------------------------------


def test_wrap_round_trip_and_refusals() -> None:
    custody = KeyCustody.from_secret(b"x" * 40)
    key = os.urandom(STUDY_KEY_BYTES)
    wrapped = custody.wrap(3, key)
    assert wrapped.wrapped != key and len(wrapped.wrapped) == len(key)
    assert custody.unwrap(3, wrapped) == key
    assert custody.wrap(3, key).wrapped != wrapped.wrapped  # a fresh nonce each time
    with pytest.raises(WrongSecret, match="not with the configured one"):
        KeyCustody.from_secret(b"y" * 40).unwrap(3, wrapped)
    with pytest.raises(WrongSecret, match="integrity"):
        custody.unwrap(4, wrapped)  # a wrapped key moved to another study
    with pytest.raises(CustodyError, match="at least 32"):
        KeyCustody.from_secret(b"short")
    assert "x" * 40 not in repr(custody) and custody.kek.hex() not in repr(custody)


def test_secret_settings(tmp_path: Path) -> None:
    with pytest.raises(MissingSecret, match="SWARMWATCH_SECRET_FILE"):
        read_secret(Settings(secret=None, secret_file=None))
    path = tmp_path / "secret"
    write_secret_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(read_secret(Settings(secret=None, secret_file=str(path)))) >= 32
    with pytest.raises(FileExistsError):
        write_secret_file(path)  # never over an existing secret
    path.chmod(0o644)
    with pytest.raises(CustodyError, match="chmod 600"):
        read_secret(Settings(secret=None, secret_file=str(path)))
    with pytest.raises(CustodyError, match="not both"):
        read_secret(Settings(secret="z" * 40, secret_file=str(path)))  # type: ignore[arg-type]
    with pytest.raises(CustodyError, match="cannot read"):
        read_secret(Settings(secret=None, secret_file=str(tmp_path / "absent")))


# --- the attacker with a copy of the database -----------------------------------------------


def test_a_copy_of_the_database_cannot_recompute_any_peer_key(
    db_url: str, db: Database, city_db: Path, tmp_path: Path
) -> None:
    register(db, ("attacked", [INFOHASH]))
    crawl(db, city_db, PEERS)
    stored = stored_peer_keys(db)
    assert len(stored) == len(PEERS)
    if db_url.startswith("sqlite"):  # the attacker's copy is the file itself
        copy = tmp_path / "copy.db"
        db.dispose()
        shutil.copy(db_url.removeprefix("sqlite:///"), copy)
        db = Database(f"sqlite:///{copy}")
    blobs = db_blobs(db)
    assert blobs, "the harness found no key material at all"
    # Every key-sized window of every blob, too: a key hidden inside a longer value.
    windows = {b[i : i + n] for b in blobs for n in (16, 32, 64) for i in range(len(b) - n + 1)}
    assert attack(sorted(set(blobs) | windows), stored) == set()
    # With the deployment secret the same attack recovers every peer: it would have failed.
    with db.session() as s:
        study_id = s.scalars(select(StudyKey.study_id)).one()
        key = ensure_study_key(s, study_id, KeyCustody.from_settings(get_settings()))
    assert attack([key], stored) == set(PEERS)
    db.dispose()


# --- refusals: never a silent new key --------------------------------------------------------


def test_no_secret_refuses_ingest_and_crawl(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(db, ("refused", [INFOHASH]))
    lines = tmp_path / "s.jsonl"
    lines.write_text(
        f'{{"ip": "81.2.69.7", "port": 1, "infohash": "{INFOHASH}", "time": "2026-11-27T13:00Z"}}\n'
    )
    monkeypatch.delenv("SWARMWATCH_SECRET")
    get_settings.cache_clear()
    for args in (["ingest", str(lines)], ["crawl", "--crawlers", "tracker"], ["serve"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "refusing to" in result.output and "no deployment secret" in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(StudyKey)) == 0
        assert s.scalar(select(func.count()).select_from(Peer)) == 0


def test_a_wrong_secret_is_refused(
    db: Database, city_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(db, ("pinned", [INFOHASH]))
    crawl(db, city_db, PEERS[:2])
    other = KeyCustody.from_secret(b"another deployment's secret, 40 chars...")
    with pytest.raises(WrongSecret, match="other workers use"):
        crawl(db, city_db, PEERS[2:], custody=other)
    monkeypatch.setenv("SWARMWATCH_SECRET", "another deployment's secret, 40 chars...")
    get_settings.cache_clear()
    lines = tmp_path / "s.jsonl"
    lines.write_text(
        f'{{"ip": "81.2.69.9", "port": 1, "infohash": "{INFOHASH}", "time": "2026-11-27T13:00Z"}}\n'
    )
    result = runner.invoke(app, ["ingest", str(lines)])
    assert result.exit_code == 1 and "refusing to ingest" in result.output, result.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Peer)) == 2
        assert s.scalar(select(func.count()).select_from(DeploymentSecret)) == 1


# --- sealing ---------------------------------------------------------------------------------


def test_seal_destroys_the_wrapped_key_in_the_file(
    db_url: str, db: Database, city_db: Path
) -> None:
    register(db, ("sealed", [INFOHASH]))
    crawl(db, city_db, PEERS)
    with db.session() as s:
        row = s.scalars(select(StudyKey)).one()
        material = [bytes(row.nonce), bytes(row.wrapped_key), bytes(row.tag)]
        study_id = row.study_id
    result = runner.invoke(app, ["study", "seal", str(study_id), "--yes"])
    assert result.exit_code == 0, result.output
    custody = KeyCustody.from_settings(get_settings())
    with db.session() as s:
        assert s.get(StudyKey, study_id) is None
        with pytest.raises(StudySealed):
            ensure_study_key(s, study_id, custody)
    assert crawl(db, city_db, PEERS).stats.sealed == len(PEERS)
    if db_url.startswith("sqlite"):
        db.dispose()
        raw = b"".join(
            Path(db_url.removeprefix("sqlite:///") + suffix).read_bytes()
            for suffix in ("", "-wal")
            if Path(db_url.removeprefix("sqlite:///") + suffix).exists()
        )
        for blob in material:
            assert blob not in raw  # not even in a free page or the write-ahead log


def test_demo_secret_is_private(tmp_path: Path) -> None:
    from swarmwatch.cli import demo_secret

    path = demo_secret(tmp_path / "demo.db")
    assert path.stat().st_mode & 0o777 == 0o600
    assert demo_secret(tmp_path / "demo.db").read_bytes() != b""  # replaced, not refused


# --- the migration of plaintext keys (0005 → 0006) -------------------------------------------


def test_migration_wraps_existing_plaintext_keys(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(db_url)
    upgrade_database(db.engine, "0005")
    plain = os.urandom(32)
    at = "2026-11-27 00:00:00"
    known = packed_key(address_key(ipaddress.ip_address(PEERS[0])))
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO study (id, name, description, k_threshold, private, created_at)"
                " VALUES (1, 'old', '', 5, false, :at)"
            ),
            {"at": at},
        )
        conn.execute(text("INSERT INTO study_key (study_id, key) VALUES (1, :k)"), {"k": plain})
        conn.execute(text("INSERT INTO title (id, study_id, name) VALUES (1, 1, 't')"))
        conn.execute(
            text(
                "INSERT INTO peer (title_id, peer_key, study_id, first_seen, last_seen,"
                " sightings) VALUES (1, :pk, 1, :at, :at, 1)"
            ),
            {"pk": peer_key(plain, known), "at": at},
        )
    # Without the secret: a clear refusal, and nothing changed.
    monkeypatch.delenv("SWARMWATCH_SECRET")
    get_settings.cache_clear()
    with pytest.raises(RuntimeError, match="needs the deployment secret"):
        db.upgrade()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1 and "needs the deployment secret" in result.output
    assert "Traceback" not in result.output
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT key FROM study_key")).scalar_one() == plain
    # With it: wrapped in place, and the old peer keys stay valid (no new key).
    monkeypatch.setenv("SWARMWATCH_SECRET", "the deployment secret of this test, 40+ chars")
    get_settings.cache_clear()
    db.upgrade()
    custody = KeyCustody.from_settings(get_settings())
    with db.session() as s:
        assert ensure_study_key(s, 1, custody) == plain
        assert s.scalars(select(DeploymentSecret.secret_id)).all() == [custody.secret_id]
        assert peer_key(ensure_study_key(s, 1, custody), known) in {
            bytes(k) for k in s.scalars(select(Peer.peer_key))
        }
        assert "key" not in {c["name"] for c in inspect(s.connection()).get_columns("study_key")}
    if db_url.startswith("sqlite"):
        db.dispose()
        path = Path(db_url.removeprefix("sqlite:///"))
        with Database(db_url).engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert plain not in path.read_bytes()
    # And back: 0005's plaintext again (the downgrade needs the secret too).
    from alembic import command

    from swarmwatch.store.database import alembic_config

    db = Database(db_url)
    cfg = alembic_config(db_url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT key FROM study_key")).scalar_one() == plain
    db.dispose()


def test_seal_study_is_idempotent(db: Database) -> None:
    register(db, ("twice", [INFOHASH]))
    with db.session() as s:
        ensure_study_key(s, 1, KeyCustody.from_settings(get_settings()))
        assert not seal_study(s, 1).already_sealed
        assert seal_study(s, 1).already_sealed


def test_rotation_rewraps_every_key_and_retires_the_old_secret(
    db: Database, city_db: Path, tmp_path: Path
) -> None:
    register(db, ("rotated", [INFOHASH]))
    crawl(db, city_db, PEERS[:3])
    old = KeyCustody.from_settings(get_settings())
    with db.session() as s:
        key = ensure_study_key(s, 1, old)
    new_file = tmp_path / "new.secret"
    write_secret_file(new_file)
    result = runner.invoke(app, ["secret", "rotate", "--new-file", str(new_file)])
    assert result.exit_code == 0, result.output
    assert "1 study keys now wrapped" in result.output
    new = KeyCustody.from_settings(Settings(secret=None, secret_file=str(new_file)))
    with db.session() as s:
        assert ensure_study_key(s, 1, new) == key  # peer keys stay valid
    with pytest.raises(WrongSecret):
        crawl(db, city_db, PEERS, custody=old)
    crawl(db, city_db, PEERS, custody=new)
    assert len(stored_peer_keys(db)) == len(PEERS)  # the first three were recognised
    again = runner.invoke(app, ["secret", "rotate", "--new-file", str(new_file)])
    assert again.exit_code == 1 and "cannot rotate" in again.output  # old one is retired


# --- the replay digests' key (issue 15's closing notes, gap 1) ------------------------------


def _replay_file(tmp_path: Path) -> Path:
    f = tmp_path / "replayed.csv"
    lines = [f"{ip},6881,{INFOHASH},{1795780800 + i},dht" for i, ip in enumerate(PEERS)]
    f.write_text("ip,port,infohash,time,source\n" + "\n".join(lines) + "\n")
    return f


def _prefix_digests(key: bytes, path: Path) -> set[bytes]:
    """The digest of every line-prefix of the file under `key`, as FileCursor makes them."""
    if not 1 <= len(key) <= 64:
        return set()
    cursor = FileCursor(key)
    out = set()
    for _ in cursor.read(path):
        out.add(cursor.mark().digest)
    return out


def test_a_copy_of_the_database_cannot_recompute_a_replay_digest(
    db_url: str, db: Database, city_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker holds the database and guesses a replayed file exactly (its addresses,
    format and times): with every key-sized value the copy holds, no guess reproduces a
    stored digest, so the digests confirm no guessed file and no address in it."""
    monkeypatch.setenv("SWARMWATCH_GEOIP_CITY", str(city_db))
    get_settings.cache_clear()
    register(db, ("replayed", [INFOHASH]))
    f = _replay_file(tmp_path)
    ingest_file(f, db, pipeline_options={"batch_size": 2})
    with db.engine.connect() as conn:
        stored = {bytes(d) for (d,) in conn.execute(text("SELECT digest FROM replay_progress"))}
    assert stored
    if db_url.startswith("sqlite"):  # the attacker's copy is the file itself
        copy = tmp_path / "copy.db"
        db.dispose()
        shutil.copy(db_url.removeprefix("sqlite:///"), copy)
        db = Database(f"sqlite:///{copy}")
    blobs = db_blobs(db)
    windows = {b[i : i + n] for b in blobs for n in (16, 32, 64) for i in range(len(b) - n + 1)}
    for candidate in sorted(set(blobs) | windows | {b""}):
        assert not _prefix_digests(candidate, f) & stored
    # With the deployment secret the same guess is confirmed: the harness could fail.
    key = replay_key(db, KeyCustody.from_settings(get_settings()))
    assert stored <= _prefix_digests(key, f)
    # And a wrong secret is refused, never a silent new key (which would count lines twice).
    with pytest.raises(WrongSecret):
        replay_key(db, KeyCustody.from_secret(b"another deployment secret, 40+ characters"))
    db.dispose()


def test_rotation_rewraps_the_replay_key(db: Database, tmp_path: Path) -> None:
    old = KeyCustody.from_settings(get_settings())
    key = replay_key(db, old)
    new = KeyCustody.from_secret(b"the rotated deployment secret, 40+ characters")
    with db.session() as s:
        rewrap_keys(s, old, new)
    assert replay_key(db, new) == key  # a file replayed before the rotation still resumes
    with pytest.raises(WrongSecret):
        replay_key(db, old)


def test_migration_wraps_the_plain_replay_key(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(db_url)
    upgrade_database(db.engine, "0009_i14_clients")
    plain = os.urandom(32)
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO store_secret (name, value) VALUES ('replay', :v)"), {"v": plain}
        )
    monkeypatch.delenv("SWARMWATCH_SECRET")
    get_settings.cache_clear()
    with pytest.raises(RuntimeError, match="needs the deployment secret"):
        db.upgrade()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM store_secret")).scalar_one() == plain
    monkeypatch.setenv("SWARMWATCH_SECRET", TEST_SECRET)
    get_settings.cache_clear()
    db.upgrade()
    custody = KeyCustody.from_settings(get_settings())
    assert replay_key(db, custody) == plain  # earlier replay marks stay valid
    with db.session() as s:
        assert s.scalars(select(DeploymentSecret.secret_id)).all() == [custody.secret_id]
    if db_url.startswith("sqlite"):
        db.dispose()
        path = Path(db_url.removeprefix("sqlite:///"))
        with Database(db_url).engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert plain not in path.read_bytes()
        db = Database(db_url)
    from alembic import command

    from swarmwatch.store.database import alembic_config

    cfg = alembic_config(db_url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009_i14_clients")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM store_secret")).scalar_one() == plain
    db.dispose()
