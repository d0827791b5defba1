"""The master's side of drain/undrain (anycastlb.orchestrate.master), the runner's logic.

The minions are a recorder here (what Salt's LocalClient would return); the same code
runs against real minions and route reflectors in tests/integration/test_ops_lab.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb.orchestrate import Master, config_of, expected_back
from anycastlb.orchestrate.git import GitError, stage_release


class Minions:
    """Answers per execution function; records every call."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], str, dict | None]] = []

    def __call__(self, targets, fun, kwarg, wait):
        self.calls.append((tuple(targets), fun, kwarg))
        a = self.answers.get(fun)  # no answer (None): the minion did not answer
        out = {t: a(t, kwarg) if callable(a) else a for t in targets}
        return {t: v for t, v in out.items() if v is not None}


def status(announced: list[str]):
    return (0, {"healthd": {"prefixes": {p: {"announced": True} for p in announced}}, "drain_file": False})


@pytest.fixture
def master(tmp_path, campus_catalog):
    def make(answers: dict[str, Any]) -> tuple[Master, Minions]:
        m = Minions(answers)
        return Master(config_of([{"other": {}}, {"anycastlb": {"catalog": str(campus_catalog)}}]), str(tmp_path), m), m
    return make


SESSIONS_UP = (0, {"clie_lb1_4": {"state": "Established", "neighbor": "198.51.100.21"},
                   "clie_lb1_6": {"state": "Established", "neighbor": "2001:db8:100::21"}})


WAITED = (0, {"result": True, "open": 0, "waited_ms": 800, "comment": "no session left after 800 ms"})


def test_drain_in_order_and_the_sessions_must_stay_up(master) -> None:
    m, minions = master({"anycastlb.status": status(["192.0.2.10/32"]), "anycastlb.drain": (0, {"result": True}),
                         "anycastlb.wait_routes": (0, {"result": True, "waited_ms": 12}),
                         "anycastlb.sessions": SESSIONS_UP, "anycastlb.wait_sessions": WAITED})
    ret = m.drain("lb1", timeout=5)
    assert ret["result"] is True, ret
    assert [c[1] for c in minions.calls] == ["anycastlb.status", "anycastlb.drain", "anycastlb.wait_routes",
                                             "anycastlb.sessions", "anycastlb.wait_sessions"]
    assert minions.calls[2][0] == ("rr1", "rr2") and set(minions.calls[2][2]["via"]) == {"198.51.100.21",
                                                                                       "2001:db8:100::21"}
    assert ret["sessions"]["rr1"] == {"clie_lb1_4": "Established", "clie_lb1_6": "Established"}

    m, _ = master({"anycastlb.status": status([]), "anycastlb.drain": (0, {}),
                   "anycastlb.wait_routes": (0, {}),
                   "anycastlb.sessions": (0, {"clie_lb1_4": {"state": "start (Active)", "neighbor": "198.51.100.21"}})})
    ret = m.drain("lb1", timeout=5)
    assert ret["result"] is False and "BGP session clie_lb1_4 with lb1 is start (Active)" in ret["comment"]


def test_undrain_waits_for_what_it_announced_before(master) -> None:
    m, minions = master({"anycastlb.status": status(["192.0.2.10/32", "2001:db8:1::10/128"]),
                         "anycastlb.drain": (0, {}), "anycastlb.wait_routes": (0, {"waited_ms": 3}),
                         "anycastlb.sessions": SESSIONS_UP, "anycastlb.wait_sessions": WAITED,
                         "anycastlb.undrain": (0, {"prefixes": {"192.0.2.10/32": True}})})
    assert m.drain("lb1")["result"]
    ret = m.undrain("lb1")
    assert ret["result"] is True, ret
    assert ret["expected"] == ["192.0.2.10/32", "2001:db8:1::10/128"]  # remembered, though not back yet
    assert minions.calls[-1][1:] == ("anycastlb.wait_routes", {"via": ["198.51.100.21", "2001:db8:100::21"],
                                                               "present": ret["expected"], "timeout": 30})


def test_expected_back_keeps_only_what_the_catalog_still_gives() -> None:
    model = {"state": "active", "bgp": {"announce": ["192.0.2.10/32"]}}
    assert expected_back(model, {"192.0.2.10/32", "192.0.2.99/32"}, set()) == ["192.0.2.10/32"]
    assert expected_back(model, set(), {"192.0.2.12/32"}) == ["192.0.2.12/32"]
    assert expected_back({**model, "state": "drain"}, {"192.0.2.10/32"}, {"192.0.2.10/32"}) == []


def test_unknown_node_and_plan_reports_out_at_once(master) -> None:
    m, _ = master({"anycastlb.status": (0, {})})
    assert m.drain("nosuch")["comment"] == "nosuch is not a node of the catalog"
    ret = m.plan(runtime=False)
    assert ret["result"] is True and ret["out_at_once"] and max(ret["out_at_once"].values()) <= 1


def test_lint_reads_the_secrets_store_of_the_ext_pillar(tmp_path, campus_catalog, campus_secrets) -> None:
    conf = config_of([{"anycastlb": {"catalog": str(campus_catalog), "secrets": str(campus_secrets)}}])
    res = Master(conf, str(tmp_path), Minions({})).lint()
    assert res.ok, res.errors


def test_the_steps_of_one_deploy_compile_the_catalog_once_until_it_changes(tmp_path, campus_catalog) -> None:
    from anycastlb.orchestrate.lint import CACHE

    cat = tmp_path / "campus.yaml"
    cat.write_text(campus_catalog.read_text())
    m = Master(config_of([{"anycastlb": {"catalog": str(cat)}}]), str(tmp_path / "cache"),
               Minions({"anycastlb.status": status(["192.0.2.10/32"])}))
    before = CACHE.compilations
    assert m.plan(runtime=False)["result"] and m.remember("lb1")["result"] and m.lint().ok
    assert CACHE.compilations == before + 1  # plan, remember and lint: one compilation
    cat.write_text(cat.read_text() + "# edited\n")
    assert m.lint().ok and CACHE.compilations == before + 2  # an edited file is compiled again
    cat.write_text("services: {x: {mode: bogus}}\n")
    assert not m.lint().ok and not m.plan(runtime=False)["result"]  # and a refused one refuses every step


# ----------------------------------------------------------------- issue 13: per-node records, decommission, staging


def _catalog(tmp_path: Path, campus_catalog: Path, edit=None, name: str = "campus.yaml") -> Path:
    data = yaml.safe_load(campus_catalog.read_text())
    if edit:
        edit(data)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _master(tmp_path: Path, catalog: Path, answers: dict[str, Any], **conf: Any) -> tuple[Master, Minions]:
    m = Minions(answers)
    return Master(config_of([{"anycastlb": {"catalog": str(catalog), **conf}}]), str(tmp_path / "cache"), m), m


def test_each_node_is_planned_against_what_it_last_applied(tmp_path, campus_catalog):
    catalog = _catalog(tmp_path, campus_catalog)
    m, _ = _master(tmp_path, catalog, {})
    first = m.plan(runtime=False)
    assert "no deployed catalog recorded" in first["comment"]
    lb1 = next(s for s in first["steps"] if s["node"] == "lb1")
    assert m.mark_applied("lb1", "0" * 16)["result"] is False, "a hash that is not the plan's"
    assert m.mark_applied("lb1", lb1["hash"])["result"] is True
    assert set(m.applied()) == {"lb1"}
    # the deploy stopped after lb1: the next plan applies lb1 in place, lb2 (no record) is drained
    again = {s["node"]: s for s in m.plan(runtime=False)["steps"]}
    assert again["lb1"]["actions"] == ["remember", "apply", "verify", "announced"]
    assert again["lb2"]["actions"][0] == "drain"
    assert "what each node last applied (1 recorded" in m.plan(runtime=False)["comment"]


def test_with_a_record_for_every_node_the_plan_does_not_compile_the_deployed_catalog(tmp_path, campus_catalog,
                                                                                      monkeypatch):
    from anycastlb.orchestrate.lint import CACHE

    catalog = _catalog(tmp_path, campus_catalog)
    m, _ = _master(tmp_path, catalog, {})
    first = m.plan(runtime=False)
    assert all(m.mark_applied(s["node"], s["hash"])["result"] for s in first["steps"])
    assert m.mark_deployed(from_plan=True)["result"]
    catalog.write_text(catalog.read_text() + "# a push\n")
    CACHE.clear()  # each deploy is a new orchestration process
    before = CACHE.compilations
    import anycastlb.pillar

    def no_yaml(path):
        raise AssertionError("the deployed catalog's nodes are on record, not read again")
    with monkeypatch.context() as mp:
        mp.setattr(anycastlb.pillar, "catalog_nodes", no_yaml)
        again = m.plan(runtime=False)
    assert again["result"] and CACHE.compilations == before + 1, "the new catalog only"
    assert f"({len(first['steps'])} recorded)" in again["comment"]
    assert next(s for s in again["steps"] if s["node"] == "lb1")["actions"] == ["remember", "apply", "verify", "announced"]
    # a node of the deployed catalog without a record (lost) brings that catalog back: lb2, removed from
    # the new catalog, is still decommissioned
    os.remove(m._applied_path("lb2"))
    _catalog(tmp_path, campus_catalog, lambda d: (d["nodes"].pop("lb2"), d["clusters"]["edge"].update(nodes=["lb1", "lb3"])))
    CACHE.clear()
    before = CACHE.compilations
    steps = m.plan(runtime=False)["steps"]
    assert CACHE.compilations == before + 2, "the new catalog and the deployed one"
    assert steps[0]["node"] == "lb2" and steps[0]["actions"] == ["decommission"], steps[0]


def test_marking_the_current_catalog_deployed_records_what_every_node_runs(tmp_path, campus_catalog):
    from anycastlb.orchestrate.lint import CACHE

    catalog = _catalog(tmp_path, campus_catalog)
    m, _ = _master(tmp_path, catalog, {})
    assert m.mark_deployed()["result"]   # after a highstate of every node (as lab up does)
    plan = {s["node"]: s["hash"] for s in m.plan(runtime=False, save=False)["steps"]}
    assert {n: r["hash"] for n, r in m.applied().items()} == plan
    catalog.write_text(catalog.read_text() + "# a push\n")
    CACHE.clear()
    before = CACHE.compilations
    again = m.plan(runtime=False, changed_only=True)
    assert again["result"] and again["steps"] == [], "a comment changes no model: nothing to apply"
    assert CACHE.compilations == before + 1, "only the pushed catalog is compiled"
    _catalog(tmp_path, campus_catalog, lambda d: d["services"]["www"].update(balance="leastconn"))
    steps = m.plan(runtime=False, changed_only=True)["steps"]
    planned = tmp_path / "cache" / "anycastlb" / "deploy" / "planned-models"
    assert steps and sorted(p.stem for p in planned.iterdir()) == sorted(s["node"] for s in steps), \
        "only the models of the nodes it applies are kept"


def test_the_plan_notes_what_each_node_applied_in_place_announces(tmp_path, campus_catalog):
    catalog = _catalog(tmp_path, campus_catalog)
    m, minions = _master(tmp_path, catalog, {"anycastlb.status": status(["192.0.2.10/32"]),
                                             "anycastlb.wait_routes": (0, {"result": True, "waited_ms": 3})})
    first = m.plan(runtime=False)
    assert all(m.mark_applied(s["node"], s["hash"])["result"] for s in first["steps"])
    assert m._remembered("lb1") == set(), "a plan without runtime reads no status and notes nothing"
    lb1 = next(s for s in m.plan()["steps"] if s["node"] == "lb1")
    assert lb1["actions"] == ["remember", "apply", "verify", "announced"]
    assert [c[1] for c in minions.calls] == ["anycastlb.status"], "one status read of every speaker, no more"
    assert m._remembered("lb1") == {"192.0.2.10/32"}
    ret = m.undrain("lb1", in_place=True, applied="0" * 16)   # a hash that is not the plan's
    assert ret["result"] is False and "not recorded" in ret["comment"], ret
    m._remember("lb1", ["192.0.2.10/32"], "in place")
    ret = m.undrain("lb1", in_place=True, applied=lb1["hash"])   # the "announced" step after the apply
    assert ret["result"] is True and "192.0.2.10/32" in ret["expected"], ret
    assert m.applied()["lb1"]["hash"] == lb1["hash"] == ret["applied"], "announced recorded what lb1 runs"
    assert m.plan(save=False) and m._remembered("lb1") == set(), "announced took the note; a dry plan writes none"


def test_a_dry_plan_writes_nothing(tmp_path, campus_catalog):
    m, _ = _master(tmp_path, campus_catalog, {})
    assert m.plan(runtime=False, save=False)["result"] is True
    cache = tmp_path / "cache" / "anycastlb"
    assert not [p for p in cache.rglob("*") if p.is_file()], "no plan file, no snapshot"
    assert m.mark_applied("lb1")["result"] is False


def test_decommission_drains_waits_for_the_route_reflectors_then_takes_the_node_apart(tmp_path, campus_catalog):
    old = _catalog(tmp_path, campus_catalog, name="old.yaml")
    new = _catalog(tmp_path, campus_catalog, lambda d: (d["nodes"].pop("lb2"),
                                                        d["clusters"]["edge"].update(nodes=["lb1", "lb3"])))
    m, minions = _master(tmp_path, old, {})
    lb2 = next(s for s in m.plan(runtime=False)["steps"] if s["node"] == "lb2")
    m.mark_applied("lb2", lb2["hash"])
    m.config["catalog"] = str(new)
    m2, minions = _master(tmp_path, new, {
        "anycastlb.drain": (0, {"result": True}),
        "anycastlb.wait_routes": (0, {"result": True, "waited_ms": 5}),
        "anycastlb.decommission": (0, {"result": True, "comment": "retired healthd, haproxy, bird, nftables",
                                       "changes": {"healthd": {}}})})
    steps = m2.plan(runtime=False)["steps"]
    assert steps[0]["node"] == "lb2" and steps[0]["actions"] == ["decommission"]
    ret = m2.decommission("lb2", timeout=5)
    assert ret["result"] is True, ret
    assert [c[1] for c in minions.calls] == ["anycastlb.drain", "anycastlb.wait_routes", "anycastlb.decommission"]
    assert set(minions.calls[1][2]["via"]) == {"198.51.100.22", "2001:db8:100::22"}, "its old addresses"
    kwarg = minions.calls[2][2]
    assert kwarg["wait"] > 0 and "www-443" in kwarg["frontends"], "its sessions may end before HAProxy stops"
    assert "lb2" not in m2.applied(), "decommissioned: its record goes"
    assert m2.decommission("lb1")["result"] is False, "still in the catalog"


def test_decommission_of_an_unreachable_node_passes_once_no_route_goes_via_it(tmp_path, campus_catalog):
    old = _catalog(tmp_path, campus_catalog, name="old.yaml")
    new = _catalog(tmp_path, campus_catalog, lambda d: (d["nodes"].pop("lb2"),
                                                        d["clusters"]["edge"].update(nodes=["lb1", "lb3"])))
    m, _ = _master(tmp_path, old, {})
    m.mark_applied("lb2", next(s for s in m.plan(runtime=False)["steps"] if s["node"] == "lb2")["hash"])
    m, _ = _master(tmp_path, new, {"anycastlb.wait_routes": (0, {"result": True})})
    ret = m.decommission("lb2", timeout=1)
    assert ret["result"] is True and "does not answer" in ret["comment"], ret
    assert "lb2" in m.applied(), "kept: the next deploy tries again"
    m, _ = _master(tmp_path, new, {"anycastlb.wait_routes": (1, {"comment": "still carries 192.0.2.10/32"})})
    ret = m.decommission("lb2", timeout=1)
    assert ret["result"] is False and "192.0.2.10/32" in ret["comment"], ret


# ----------------------------------------------------------------- staged catalogs


@pytest.fixture
def repo(tmp_path, campus_catalog, catalog_repo):
    return catalog_repo(tmp_path, campus_catalog.read_text())


def _bad(campus_catalog: Path) -> str:
    return campus_catalog.read_text().replace("cluster: edge\n    backends: [web1", "cluster: nosuch\n    backends: [web1")


def test_staged_release_switches_only_after_lint(tmp_path, repo, campus_catalog):
    live = tmp_path / "live"
    m, _ = _master(tmp_path, live / "campus.yaml", {}, repo=str(tmp_path / "catalog.git"))
    first = m.checkout()
    assert first["result"] is True and first["changed"] is True, first
    assert live.is_symlink() and (live / "campus.yaml").read_text() == campus_catalog.read_text()
    good_target = os.readlink(live)
    bad = repo.push(_bad(campus_catalog), "bad")
    ret = m.checkout(rev=bad)
    assert ret["result"] is False and ret["rev"] == bad, ret
    assert any("nosuch" in e and e.startswith("campus.yaml:") for e in ret["errors"]), ret["errors"]  # repo path
    assert os.readlink(live) == good_target, "the pillar still reads the good commit"
    assert not (tmp_path / "live.releases" / bad).exists(), "the refused release is removed"
    text = campus_catalog.read_text().replace("weight: 50", "weight: 60")
    fixed = repo.push(text, "fixed")
    ret = m.checkout(rev=fixed[:12])
    assert ret["result"] is True and ret["rev"] == fixed and ret["changed"], ret
    assert (live / "campus.yaml").read_text() == text
    assert m.checkout(rev=fixed)["changed"] is False
    with pytest.raises(GitError, match="not a commit id"):
        stage_release(str(tmp_path / "catalog.git"), str(live), "campus.yaml", str(tmp_path / "m.git"), "HEAD; rm")


def test_work_tree_checkout_is_linted_in_staging_first(tmp_path, repo, campus_catalog):
    checkout = repo.clone(tmp_path / "master-checkout")
    m, _ = _master(tmp_path, checkout / "campus.yaml", {})
    bad = repo.push(_bad(campus_catalog), "bad")
    ret = m.checkout(rev=bad)
    assert ret["result"] is False and "nosuch" in " ".join(ret["errors"]), ret
    assert (checkout / "campus.yaml").read_text() == campus_catalog.read_text(), "the work tree did not move"
    assert not list((tmp_path / "cache" / "anycastlb" / "staging").iterdir()), "nothing left in staging"
    fixed = repo.push(campus_catalog.read_text().replace("weight: 50", "weight: 60"), "fixed")
    ret = m.checkout(rev=fixed)
    assert ret["result"] is True and ret["rev"] == fixed, ret
    assert "weight: 60" in (checkout / "campus.yaml").read_text()


def test_graceful_drain_waits_for_the_sessions_and_reports_what_was_left(master) -> None:
    left = (1, {"result": False, "open": 7, "waited_ms": 60000,
                "comment": "7 session(s) still open at the 60 s deadline: www-443 7"})
    answers = {"anycastlb.status": status(["192.0.2.10/32"]), "anycastlb.drain": (0, {"result": True}),
               "anycastlb.wait_routes": (0, {}), "anycastlb.sessions": SESSIONS_UP, "anycastlb.wait_sessions": left}
    m, minions = master(answers)
    ret = m.drain("lb1", timeout=5)
    # the catalog's drain_deadline (60 s by default); sessions left are reported, not a failure
    assert minions.calls[-1][1:] == ("anycastlb.wait_sessions", {"deadline": 60.0})
    assert ret["result"] is True and ret["open_sessions"] == 7
    assert ret["comment"].endswith("7 session(s) still open at the 60 s deadline: www-443 7"), ret["comment"]
    m, minions = master(answers)
    m.drain("lb1", timeout=5, deadline=5)
    assert minions.calls[-1][1:] == ("anycastlb.wait_sessions", {"deadline": 5})
    for kwargs in ({"deadline": 0}, {"reason": "orchestrate"}):
        # no wait when told so, nor in a rolling deploy of a node that steers (its reload keeps the sessions)
        m, minions = master(answers)
        assert m.drain("lb1", timeout=5, **kwargs)["result"] is True
        assert "anycastlb.wait_sessions" not in [c[1] for c in minions.calls], kwargs


def test_a_node_leaving_its_cluster_is_drained_gracefully_with_the_frontends_it_ran(tmp_path, campus_catalog):
    old = _catalog(tmp_path, campus_catalog, name="old.yaml")
    new = _catalog(tmp_path, campus_catalog, lambda d: d["clusters"]["edge"].update(nodes=["lb2", "lb3"]))
    m, _ = _master(tmp_path, old, {})
    m.mark_applied("lb1", next(s for s in m.plan(runtime=False)["steps"] if s["node"] == "lb1")["hash"])
    m, minions = _master(tmp_path, new, {
        "anycastlb.status": status(["192.0.2.10/32"]), "anycastlb.drain": (0, {"result": True}),
        "anycastlb.wait_routes": (0, {"result": True}), "anycastlb.sessions": SESSIONS_UP,
        "anycastlb.wait_sessions": (0, {"result": True, "open": 0, "waited_ms": 5, "comment": "no session left"})})
    assert next(s for s in m.plan(runtime=False)["steps"] if s["node"] == "lb1")["actions"] == ["drain"]
    ret = m.drain("lb1", timeout=5, reason="orchestrate")
    assert ret["result"] is True and ret["open_sessions"] == 0, ret
    (call,) = [c for c in minions.calls if c[1] == "anycastlb.wait_sessions"]
    assert "www-443" in call[2]["frontends"] and call[2]["deadline"] > 0, "the frontends it ran, its deadline"
