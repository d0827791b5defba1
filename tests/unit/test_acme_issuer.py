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


def test_before_the_first_issuance_every_lb_node_gets_the_same_placeholder(tmp_path: Path) -> None:
    """The master's pillar workers compile in parallel: the placeholder is written once, and every LB
    node of the cluster binds 443 with the same one (the challenge route is live before any issuance)."""
    import threading
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    store = tmp_path / "acme"
    got: list[str] = []

    def pillar(node: str) -> None:
        got.append(node_pillar(node, str(catalog), acme_store=str(store),
                                cache=FleetCache())["anycastlb"]["secrets"]["certificates"]["acme-www"]["cert"])

    threads = [threading.Thread(target=pillar, args=(n,)) for n in ("lb1", "lb2", "lb1", "lb2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and set(got) == {load_store(store)["acme-www"]["cert"]}
    assert sorted(p.name for p in store.iterdir()) == ["acme-www.pem"]


def test_a_refused_renewal_pass_is_reported_to_the_monitoring_nodes_and_fails(tmp_path: Path) -> None:
    """The runner's pass (salt-run anycastlb.renew and the schedule) when issuance cannot run (here the
    token server cannot listen on the issuer's address): the placeholder stays, the LB nodes apply it,
    the monitoring node is told 'failed', the run fails."""
    from anycastlb.acme_issuer import renew_fleet
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.replace("roles: [salt-master, route-reflector]",
                                       "roles: [salt-master, route-reflector, monitoring]"))
    calls: list[tuple[list[str], str, dict]] = []

    def cmd(targets: list[str], fun: str, kwarg: dict | None = None, wait: float = 60) -> dict:
        calls.append((sorted(targets), fun, kwarg or {}))
        return {t: (0, {"result": True, "comment": "ok"}) for t in targets}

    ret = renew_fleet({"catalog": str(catalog), "acme_store": str(tmp_path / "store"),
                       "acme_directory": "https://127.0.0.1:9/dir"}, cmd)
    assert ret["result"] is False and ret["placeholders"] == ["acme-www"]
    assert [o["result"] for o in ret["outcomes"]] == ["failed"]
    assert "the old certificate stays" in ret["outcomes"][0]["reason"]
    assert (["lb1", "lb2"], "anycastlb.apply", {"daemon": "haproxy"}) in calls
    report = [c for c in calls if c[1] == "anycastlb.acme_report"]
    assert report == [(["master"], "anycastlb.acme_report", {"outcomes": ret["outcomes"], "issuer": "master"})]
    assert ret["reported"] == {"master": "reported"}


def test_an_authorization_the_ca_still_holds_as_valid_is_not_answered_again(tmp_path: Path, monkeypatch) -> None:
    """CAs reuse recent validations (Let's Encrypt for 30 days): answering a valid challenge again is
    refused ("Cannot update challenge with status valid"), so a forced renewal skips those names."""
    from types import SimpleNamespace

    from acme import challenges, messages

    from anycastlb import acme_issuer
    leaf = LabCA(tmp_path / "ca").issue(["www.example.org", "example.org"], days=30)
    chall = challenges.HTTP01(token=b"x" * 32)
    body = SimpleNamespace(chall=chall, response_and_validation=lambda key: ("response", "validation"))
    authz = {name: SimpleNamespace(body=SimpleNamespace(status=status, identifier=SimpleNamespace(value=name),
                                                        challenges=[body]))
             for name, status in (("www.example.org", messages.STATUS_VALID), ("example.org", messages.STATUS_PENDING))}
    answered: list[str] = []

    class Client:
        def new_order(self, csr: bytes) -> SimpleNamespace:
            return SimpleNamespace(authorizations=list(authz.values()))

        def answer_challenge(self, chall: object, response: object) -> None:
            answered.append(response)  # type: ignore[arg-type]

        def poll_and_finalize(self, order: object, deadline: object) -> SimpleNamespace:
            return SimpleNamespace(fullchain_pem=leaf.cert)

    monkeypatch.setattr(acme_issuer, "_client", lambda *a: (Client(), SimpleNamespace()))
    tokens = SimpleNamespace(tokens={})
    bundle = acme_issuer.issue({}, ["www.example.org", "example.org"], tmp_path, tokens)  # type: ignore[arg-type]
    assert answered == ["response"] and len(tokens.tokens) == 1
    assert bundle.startswith(leaf.cert.strip()) and "PRIVATE KEY" in bundle
