"""The ACME issuer's store and renewal decisions, and who receives an issued key (no CA needed here;
tests/integration/test_acme_pebble.py issues from a real one)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from anycastlb.acme_issuer import due, ensure_placeholders, load_store, names_of, placeholder
from anycastlb.certs import cert_info, check_bundle
from anycastlb.lab.pki import LabCA
from anycastlb.pillar import FleetCache, node_pillar

from test_acme_catalog import CATALOG  # noqa: E402 (rootdir-relative, pytest puts tests/unit on sys.path)

NOW = dt.datetime.now(dt.timezone.utc)
DAY = 86_400_000


def test_a_placeholder_is_valid_covers_the_names_and_is_due_at_once() -> None:
    bundle = placeholder(["www.example.org", "example.org"])
    assert check_bundle(bundle) == []
    assert names_of(bundle) == ["www.example.org", "example.org"]
    assert "days left" in due({"domains": ["www.example.org", "example.org"]}, bundle, 20 * DAY, NOW)


def test_renewal_is_due_below_the_threshold_or_when_the_names_change(tmp_path: Path) -> None:
    leaf = LabCA(tmp_path / "ca").issue(["www.example.org", "example.org"], days=30)
    entry = {"domains": ["example.org", "www.example.org"]}
    assert due(entry, leaf.bundle, 20 * DAY, NOW) is None
    assert due(entry, leaf.bundle, 31 * DAY, NOW) == "30.0 days left (renew_before 31 days)"
    assert due(entry, leaf.bundle, 20 * DAY, NOW + dt.timedelta(days=11)) is not None
    assert due({"domains": ["www.example.org"]}, leaf.bundle, 20 * DAY, NOW) == "the names changed"
    assert due(entry, None, 20 * DAY, NOW) == "no certificate yet"


def test_the_store_is_root_only_and_reads_back_as_certificates(tmp_path: Path) -> None:
    acme = {"certificates": [{"name": "acme-www", "domains": ["www.example.org"]}]}
    store = tmp_path / "acme"
    assert ensure_placeholders(acme, store) == ["acme-www"]
    assert ensure_placeholders(acme, store) == []          # an existing one is kept
    assert oct(store.stat().st_mode & 0o777) == "0o700"
    assert oct((store / "acme-www.pem").stat().st_mode & 0o777) == "0o600"
    certs = load_store(store)
    assert list(certs) == ["acme-www"] and certs["acme-www"]["key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert cert_info(certs["acme-www"]["cert"]).serial == cert_info((store / "acme-www.pem").read_text()).serial


def test_only_the_lb_nodes_of_the_cluster_receive_the_issued_key(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    store = tmp_path / "acme"
    ensure_placeholders({"certificates": [{"name": "acme-www", "domains": ["www.example.org"]}]}, store)
    key = load_store(store)["acme-www"]["key"]
    cache = FleetCache()
    got = {n: node_pillar(n, str(catalog), acme_store=str(store), cache=cache)["anycastlb"]["secrets"]
           for n in ("master", "lb1", "lb2", "lb3", "web1")}
    assert got["lb1"]["certificates"]["acme-www"]["key"] == key == got["lb2"]["certificates"]["acme-www"]["key"]
    for n in ("master", "lb3", "web1"):
        assert got[n]["certificates"] == {} and key not in repr(got[n])
