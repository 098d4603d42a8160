"""Remote mode of keys, audit, policies, report, budgets and cache: the same output as local mode.

One shipped gateway; each command runs twice as a subprocess: locally in the gateway's folder
(the database), and remotely from a folder without gateway.yaml, with GATEWAY_URL and an admin
key and no database URL. JSON outputs must match byte for byte, tables line for line.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from test_prompts_e2e import ShippedGateway
from test_prompts_remote import RemoteCli

from support.gateway_proc import REPO

pytestmark = pytest.mark.slow  # some thirty process starts of about a second each


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedGateway]:
    root = tmp_path_factory.mktemp("shipped-admin")
    gateway = ShippedGateway(root, f"sqlite:///{root / 'gateway.db'}").start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def admin(gw: ShippedGateway, tmp_path_factory: pytest.TempPathFactory) -> RemoteCli:
    folder = tmp_path_factory.mktemp("ops-laptop")
    shutil.copytree(REPO / "policies", folder / "policies")
    key = gw.gateway("keys", "create", "--team", "support", "--role", "admin").stdout.strip().splitlines()[-1]
    return RemoteCli(folder, gw.url, key)


def test_keys(gw: ShippedGateway, admin: RemoteCli) -> None:
    created = admin("keys", "create", "--team", "support", "--role", "author", "--name", "ci")
    first, secret = created.stdout.strip().splitlines()
    assert first.startswith("Created ") and first.endswith(
        " for team support with roles author. Store it now: it is not shown again.")
    assert secret.startswith("gw-")
    key_id = first.split()[1]
    typo = admin("keys", "create", "--team", "suport", check=False)
    assert typo.returncode == 1 and typo.stderr.startswith("error: no policy names the team 'suport' (known teams: ")
    assert admin("keys", "create", "--team", "coming-soon", "--force").stdout.startswith("Created ")
    assert admin("keys", "list", "--format", "json").stdout == gw.gateway("keys", "list", "--format", "json").stdout
    assert admin("keys", "list", "--team", "support").stdout == gw.gateway("keys", "list", "--team", "support").stdout
    assert admin("keys", "revoke", key_id).stdout == f"Revoked {key_id}.\n"
    again = admin("keys", "revoke", key_id, check=False)
    assert (again.returncode, again.stderr) == (1, f"error: no active key {key_id!r}\n")
    # The role check is the admin API's: an author key may not manage keys.
    author = RemoteCli(admin.folder, gw.url, gw.gateway("keys", "create", "--team", "support", "--role", "author")
                       .stdout.strip().splitlines()[-1])
    refused = author("keys", "list", check=False)
    assert (refused.returncode, refused.stderr) == (1, "error: This needs one of the roles: admin.\n")


def test_policies(gw: ShippedGateway, admin: RemoteCli) -> None:
    nothing = admin("policies", "status").stdout
    assert nothing == gw.gateway("policies", "status").stdout and nothing.startswith("nothing applied yet")
    assert admin("policies", "apply", "--dry-run").stdout.rstrip().endswith("valid; dry run, nothing applied")
    applied = admin("policies", "apply", "-m", "from CI", "--ticket", "OPS-1")
    assert "applied policy version 1" in applied.stdout
    status = admin("policies", "status").stdout
    assert status == gw.gateway("policies", "status").stdout
    assert "applied version 1 at " in status and "files match the applied version" in status
    # A broken file: every problem on its own line, nothing applied.
    (admin.folder / "policies" / "teams.yaml").write_text("teams: [not, a, mapping]\n")
    broken = admin("policies", "apply", "-m", "broken", check=False)
    assert broken.returncode == 1 and broken.stdout == ""
    assert broken.stderr.startswith("error: ") and "teams.yaml" in broken.stderr
    assert "applied version 1 " in admin("policies", "status").stdout
    shutil.copy(REPO / "policies" / "teams.yaml", admin.folder / "policies" / "teams.yaml")


def test_audit_report_budgets_cache(gw: ShippedGateway, admin: RemoteCli) -> None:
    for args in (("audit", "list", "--format", "json"), ("audit", "list", "--format", "csv"),
                 ("audit", "list", "--action", "key.create"), ("audit", "verify"),
                 ("report", "costs", "--format", "json"), ("report", "costs", "--by", "team,alias"),
                 ("report", "costs", "--format", "csv", "--team", "support")):
        assert admin(*args).stdout == gw.gateway(*args).stdout, args
    assert admin("audit", "verify").stdout.startswith("ok: ")
    bad = admin("report", "costs", "--from", "yesterday", check=False)
    assert bad.returncode == 1 and bad.stderr == gw.gateway("report", "costs", "--from", "yesterday",
                                                            check=False).stderr
    remote = json.loads(admin("budgets", "status", "--format", "json").stdout)
    local = json.loads(gw.gateway("budgets", "status", "--format", "json").stdout)
    # The server answers from its live counters, the local CLI from the ledger: the same budgets.
    assert [(r["team"], r["scope"], r["limit_usd"]) for r in remote] == [
        (r["team"], r["scope"], r["limit_usd"]) for r in local]
    stats = json.loads(admin("cache", "stats").stdout)
    assert "backend" in stats
