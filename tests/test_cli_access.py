"""The CLI side of ownership: admin keys, listing and revoking keys, owners and grants."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from swarmwatch.access import Role, role_of
from swarmwatch.auth import verify_api_key
from swarmwatch.cli import app
from swarmwatch.store import Database
from swarmwatch.store.models import ApiKey, Study

runner = CliRunner()


def make_key(*args: str) -> tuple[str, int]:
    result = runner.invoke(app, ["apikey", "create", *args])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    match = re.search(r"API key (\d+)", result.output)
    assert match, result.output
    return key, int(match.group(1))


def test_keys_admin_list_revoke_and_study_owners(db_url: str) -> None:
    admin, admin_id = make_key("--name", "boss", "--admin")
    lab, lab_id = make_key("--name", "lab")
    guest, guest_id = make_key("--name", "guest")
    listing = runner.invoke(app, ["apikey", "list"])
    assert listing.exit_code == 0, listing.output
    assert re.search(rf"^{admin_id}\s+sw_\S+\s+boss\s+admin\s", listing.stdout, re.M)
    assert re.search(rf"^{lab_id}\s+sw_\S+\s+lab\s+key\s", listing.stdout, re.M)
    assert admin not in listing.stdout and lab not in listing.stdout  # never the keys

    # A CLI study with no --owner is the admins' alone; with --owner, that key's.
    assert runner.invoke(app, ["study", "create", "cli study"]).exit_code == 0
    result = runner.invoke(app, ["study", "create", "lab study", "--owner", str(lab_id)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["study", "grant", "2", "--key", str(guest_id), "--role", "write"])
    assert result.exit_code == 0, result.output
    db = Database(db_url)
    with db.session() as s:
        cli_study, lab_study = s.get(Study, 1), s.get(Study, 2)
        assert cli_study is not None and lab_study is not None
        keys = {k: verify_api_key(s, k) for k in (admin, lab, guest)}
        assert role_of(s, cli_study, keys[lab]) is Role.NONE
        assert role_of(s, cli_study, keys[admin]) is Role.ADMIN
        assert role_of(s, lab_study, keys[lab]) is Role.OWNER
        assert role_of(s, lab_study, keys[guest]) is Role.WRITE

    assert runner.invoke(app, ["study", "ungrant", "2", "--key", str(guest_id)]).exit_code == 0
    result = runner.invoke(app, ["study", "owner", "1", "--key", str(guest_id)])
    assert result.exit_code == 0, result.output
    with db.session() as s:
        lab_study = s.get(Study, 2)
        cli_study = s.get(Study, 1)
        assert lab_study is not None and cli_study is not None
        assert role_of(s, lab_study, verify_api_key(s, guest)) is Role.NONE
        assert cli_study.owner_key_id == guest_id

    result = runner.invoke(app, ["apikey", "revoke", str(lab_id)])
    assert result.exit_code == 0, result.output
    with db.session() as s:
        assert verify_api_key(s, lab) is None
        row = s.get(ApiKey, lab_id)
        assert row is not None and row.revoked_at is not None
    db.dispose()
    assert "revoked" in runner.invoke(app, ["apikey", "list"]).stdout

    for args, fragment in [
        (["apikey", "revoke", str(lab_id)], "revoked already"),
        (["apikey", "revoke", "999"], "no API key 999"),
        (["study", "grant", "2", "--key", "999"], "no active API key 999"),
        (["study", "grant", "2", "--key", str(guest_id), "--role", "admin"], "role must be"),
        (["study", "grant", "9", "--key", str(guest_id)], "study 9 not found"),
        (["study", "ungrant", "2", "--key", str(guest_id)], "has no grant"),
        (["study", "create", "x", "--owner", "999"], "no active API key 999"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert fragment in result.output and "Traceback" not in result.output


def test_secret_create_writes_a_private_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "secret"
    result = runner.invoke(app, ["secret", "create", str(path)])
    assert result.exit_code == 0, result.output
    assert f"SWARMWATCH_SECRET_FILE={path}" in result.output
    assert path.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["secret", "create", str(path)])
    assert again.exit_code == 1 and "cannot create" in again.output
