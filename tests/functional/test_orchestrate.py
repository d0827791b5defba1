"""The rolling deploy's pure parts (plan, lint, BIRD parsing) and the runner through Salt's loader."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from anycastlb import orchestrate as orch
from anycastlb.compiler import compile_catalog

REPO = Path(__file__).resolve().parents[2]

# `birdc show route all` on route reflector rr1 of the lab (BIRD 2.0.12), two prefixes kept.
ROUTES = (
    "BIRD 2.0.12 ready.\nTable master4:\n"
    "192.0.2.11/32        unicast [clie_lb1_4 07:41:39.146] * (100) [i]\n"
    "\tvia 198.51.100.21 on eth0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n"
    "\tBGP.next_hop: 198.51.100.21\n\tBGP.local_pref: 100\n"
    "                     unicast [clie_lb2_4 07:41:39.094] (100) [i]\n"
    "\tvia 198.51.100.22 on eth0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n"
    "\tBGP.next_hop: 198.51.100.22\n\tBGP.local_pref: 100\n\n"
    "Table master6:\n"
    "2001:db8:1::88/128   unicast [clie_kdc1_6 07:41:39.256] * (100) [i]\n"
    "\tvia 2001:db8:100::41 on eth0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n"
    "\tBGP.next_hop: 2001:db8:100::41 fe80::90af:c8ff:feb8:ae4e\n\tBGP.local_pref: 100\n"
    "                     unicast [clie_kdc2_6 07:41:39.788] (100) [i]\n"
    "\tvia 2001:db8:100::42 on eth0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n"
    "\tBGP.next_hop: 2001:db8:100::42 fe80::d4a0:6dff:fe8f:a15c\n\tBGP.local_pref: 100\n"
)
# `birdc show protocols all` (abridged) with one session up and one that lost its peer.
PROTOCOLS = (
    "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n"
    "device1    Device     ---        up     07:41:37.312  \n"
    "clie_lb1_4 BGP        ---        up     07:41:39.109  Established   \n"
    "  Description:    client lb1\n  BGP state:          Established\n"
    "    Neighbor address: 198.51.100.21\n    Neighbor AS:      64512\n"
    "clie_lb2_4 BGP        ---        start  07:52:01.554  Active        Socket: Connection refused\n"
    "  Description:    client lb2\n  BGP state:          Active\n"
    "    Neighbor address: 198.51.100.22\n"
)


@pytest.fixture(scope="module")
def fleet(campus_catalog):
    return compile_catalog(campus_catalog)


def _edited(tmp_path: Path, campus_catalog: Path, edit) -> Path:
    data = yaml.safe_load(campus_catalog.read_text())
    edit(data)
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


# ----------------------------------------------------------------- the plan


def test_plan_orders_route_reflectors_first_then_one_lb_at_a_time(fleet):
    steps = orch.plan(fleet)
    nodes = [s.node for s in steps]
    assert sorted(nodes) == sorted(fleet.nodes), "every node exactly once"
    assert nodes[:2] == ["rr1", "rr2"]
    assert nodes[2:5] == ["lb1", "lb2", "lb3"]
    assert nodes[5:7] == ["kdc1", "kdc2"]
    assert nodes[7:9] == ["web1", "web2"]
    assert nodes[9:] == ["mon1", "salt"], "monitoring, then the salt-master last"
    by = {s.node: s for s in steps}
    assert by["rr1"].actions == ("apply", "verify")
    assert by["lb1"].actions == by["lb2"].actions == ("drain", "apply", "verify", "undrain")
    assert by["kdc1"].actions == ("drain", "apply", "verify", "undrain")
    assert by["web1"].actions == ("apply", "verify")
    # the web backends come later: their HAProxy backends may still be down at the LBs' verify
    assert by["lb1"].pending == ("intranet-8080", "www-8080")
    assert orch.out_at_once(steps, fleet) == {"edge": 1}


def test_node_drained_in_the_catalog_is_never_undrained(fleet):
    lb3 = next(s for s in orch.plan(fleet) if s.node == "lb3")
    assert "undrain" not in lb3.actions
    assert lb3.actions[:2] == ("drain", "apply")
    assert "catalog wins" in lb3.note


def test_node_the_catalog_drains_now_is_drained_first(tmp_path, campus_catalog):
    """lb2 was active and the catalog drains it: withdrawn before its apply; lb3, drained in both, is not."""
    def edit(d):
        d["nodes"]["lb2"]["state"] = "drain"
    deployed, new = _change(tmp_path, campus_catalog, edit)
    by = {s.node: s for s in orch.plan(new, deployed=deployed)}
    assert by["lb2"].actions == ("drain", "apply", "verify")
    assert by["lb3"].actions == ("apply", "verify")
    assert {s.node: s for s in orch.plan(new, deployed=deployed, drain="always")}["lb3"].actions == (
        "drain", "apply", "verify"), "always: every node"


def test_node_drained_at_runtime_stays_drained(fleet):
    lb2 = next(s for s in orch.plan(fleet, {"lb2": "reason: disk swap"}) if s.node == "lb2")
    assert lb2.actions == ("drain", "apply", "verify")
    assert "disk swap" in lb2.note


def test_only_active_node_of_a_cluster_is_applied_in_place(tmp_path, campus_catalog):
    def edit(d):
        d["nodes"]["lb2"]["state"] = "maintenance"
    fleet = compile_catalog(_edited(tmp_path, campus_catalog, edit))
    by = {s.node: s for s in orch.plan(fleet)}
    assert by["lb1"].actions == ("apply", "verify"), "draining it would take every VIP of the cluster down"
    assert "undrain" not in by["lb2"].actions


def _change(tmp_path: Path, campus_catalog: Path, edit) -> tuple:
    return compile_catalog(campus_catalog), compile_catalog(_edited(tmp_path, campus_catalog, edit))


def test_a_change_that_stays_off_the_routers_drains_nothing(tmp_path, campus_catalog):
    """A weight, a new service and a faster KDC check: reloads only, so no node is drained."""
    def edit(d):
        d["services"]["intranet"]["backends"]["web1"]["weight"] = 80
        d["services"]["api"] = {"extends": "web", "vip": "192.0.2.12", "cluster": "edge",
                                "backends": ["web1", "web2"], "apache": {"server_name": "api.example.org"}}
        d["services"]["kdc"]["check"] = {"tcp": {"port": 88}, "interval": "1s"}
    deployed, new = _change(tmp_path, campus_catalog, edit)
    by = {s.node: s for s in orch.plan(new, deployed=deployed)}
    for n in ("lb1", "lb2", "kdc1", "kdc2"):
        assert by[n].actions == ("remember", "apply", "verify", "announced"), (n, by[n])
        assert "not drained" in by[n].note
    # lb3 is drained in the catalog, before and after: it announces nothing, so it is not drained again
    assert by["lb3"].actions == ("apply", "verify") and "catalog wins" in by["lb3"].note
    always = {s.node: s for s in orch.plan(new, deployed=deployed, drain="always")}
    assert always["lb1"].actions == ("drain", "apply", "verify", "undrain")
    assert {s.node: s.actions for s in orch.plan(new)} == {s.node: s.actions for s in always.values()}, \
        "without a deployed catalog every node is drained"


def test_changed_only_leaves_out_the_nodes_a_push_does_not_change(tmp_path, campus_catalog):
    """A backend's weight changes HAProxy on the cluster's nodes and nothing else."""
    def edit(d):
        d["services"]["intranet"]["backends"]["web1"]["weight"] = 80
    deployed, new = _change(tmp_path, campus_catalog, edit)
    steps = orch.plan(new, deployed=deployed, changed_only=True)
    assert [s.node for s in steps] == ["lb1", "lb2", "lb3"]
    assert steps == [s for s in orch.plan(new, deployed=deployed) if s.node in ("lb1", "lb2", "lb3")], \
        "the same steps, fewer nodes"
    assert orch.plan(new, changed_only=True) == orch.plan(new), "nothing to compare with: every node"
    applied = {"web1": {**deployed.nodes["web1"], "address": "198.51.100.99"}}   # web1 runs something else
    assert [s.node for s in orch.plan(new, deployed=deployed, applied=applied, changed_only=True)] == [
        "lb1", "lb2", "lb3", "web1"]


@pytest.mark.parametrize("edit,node,why", [
    (lambda d: d["bgp"].update(bfd={"interval": "200ms", "multiplier": 3}), "lb1", "its BGP bfd changes"),
    (lambda d: d["services"].pop("imap"), "lb1", "it stops announcing 192.0.2.20/32"),
    (lambda d: d["nodes"]["lb2"].update(address6="2001:db8:100::29"), "lb2", "its address6 changes"),
    (lambda d: d["nodes"].update(lb4={"address": "198.51.100.24", "address6": "2001:db8:100::24"})
     or d["clusters"]["edge"]["nodes"].append("lb4"),
     "lb4", "not in the deployed catalog"),
])
def test_a_change_that_reaches_the_routers_drains_the_node(tmp_path, campus_catalog, edit, node, why):
    deployed, new = _change(tmp_path, campus_catalog, edit)
    step = next(s for s in orch.plan(new, deployed=deployed) if s.node == node)
    assert step.actions == ("drain", "apply", "verify", "undrain")
    assert step.note == f"drained: {why}"


def test_a_node_joining_goes_after_its_peers_so_their_steering_knows_it_first(tmp_path, campus_catalog):
    """Joining in two phases: lb0 sorts first, but it is new to the cluster, so lb1..lb3 (whose
    steering gains lb0) are applied before lb0 announces; the same for a new KDC."""
    def edit(d):
        d["nodes"].update(lb0={"address": "198.51.100.20", "address6": "2001:db8:100::20"},
                          kdc0={"address": "198.51.100.40", "address6": "2001:db8:100::40"})
        d["clusters"]["edge"]["nodes"].insert(0, "lb0")
        d["services"]["kdc"]["backends"].insert(0, "kdc0")
    deployed, new = _change(tmp_path, campus_catalog, edit)
    steps = orch.plan(new, deployed=deployed)
    lbs = [s.node for s in steps if s.group == "cluster edge"]
    assert lbs == ["lb1", "lb2", "lb3", "lb0"], lbs
    assert [s.node for s in steps if s.phase == "anycast"] == ["kdc1", "kdc2", "kdc0"]
    assert "lb0" in [p["node"] for p in new.nodes["lb1"]["steering"]["groups"][0]["peers"]]
    # a first deploy (nothing deployed) keeps the catalog's order
    assert [s.node for s in orch.plan(new) if s.group == "cluster edge"][0] == "lb0"


def test_plan_refuses_an_unknown_drain_mode(fleet):
    with pytest.raises(ValueError, match="drain must be one of auto, always"):
        orch.plan(fleet, deployed=fleet, drain="never")


# ----------------------------------------------------------------- lint


def test_lint_refusal_gives_no_fleet_and_every_error(tmp_path, campus_catalog):
    def edit(d):
        d["services"]["www"]["vip"] = ["198.51.100.200"]  # outside vip_pools
        d["services"]["imap"]["cluster"] = "nosuch"
    res = orch.lint(str(_edited(tmp_path, campus_catalog, edit)))
    assert not res.ok and res.fleet is None
    assert "nothing is applied" in res.summary
    assert any("'www'" in e and "vip" in e for e in res.errors), res.errors
    assert any("'imap'" in e and "cluster" in e for e in res.errors), res.errors
    assert orch.lint(str(campus_catalog)).ok


# ----------------------------------------------------------------- BIRD answers


def test_route_parsing_from_birdc_output(fleet):
    routes = orch.parse_routes(ROUTES)
    assert sorted({r.net for r in routes}) == ["192.0.2.11/32", "2001:db8:1::88/128"]
    www = [r for r in routes if r.net == "192.0.2.11/32"]
    assert [r.next_hops for r in www] == [["198.51.100.21"], ["198.51.100.22"]]
    assert [r.best for r in www] == [True, False]
    kdc = [r for r in routes if r.net == "2001:db8:1::88/128"]
    assert kdc[0].next_hops == ["2001:db8:100::41", "fe80::90af:c8ff:feb8:ae4e"]
    assert kdc[1].proto == "clie_kdc2_6"
    assert orch.announcers(routes, fleet.nodes) == {"192.0.2.11/32": ["lb1", "lb2"],
                                                    "2001:db8:1::88/128": ["kdc1", "kdc2"]}
    assert orch.carried_via(routes, orch.node_addresses(fleet.nodes["lb1"])) == ["192.0.2.11/32"]
    assert orch.carried_via(routes, orch.node_addresses(fleet.nodes["kdc2"])) == ["2001:db8:1::88/128"]
    assert orch.carried_via(routes, orch.node_addresses(fleet.nodes["lb3"])) == []
    assert orch.parse_routes("BIRD 2.0.12 ready.\n") == []


def test_protocol_parsing_tells_established_from_not(fleet):
    protos = orch.parse_protocols(PROTOCOLS)
    sessions = orch.bgp_sessions(protos)
    assert sessions == {"clie_lb1_4": {"state": "Established", "neighbor": "198.51.100.21"},
                        "clie_lb2_4": {"state": "start (Active)", "neighbor": "198.51.100.22"}}
    assert orch.sessions_with(sessions, orch.node_addresses(fleet.nodes["lb1"])) == {"clie_lb1_4": "Established"}
    assert [p.proto for p in protos if p.name == "device1"] == ["Device"]


def test_verify_haproxy_pending_backends_are_notes_not_problems():
    rows = {("www-80", "FRONTEND"): {"status": "OPEN"},
            ("www-8080", "BACKEND"): {"status": "DOWN", "act": "0", "bck": "0"},
            ("imap-143", "BACKEND"): {"status": "UP", "act": "1", "bck": "0"}}
    problems, notes = orch.verify_haproxy(rows, ["www-80"], ["www-8080", "imap-143"], pending=["www-8080"])
    assert problems == [] and len(notes) == 1
    problems, _ = orch.verify_haproxy(rows, ["www-80", "gone-80"], ["www-8080", "imap-143"])
    assert len(problems) == 2 and any("gone-80" in p for p in problems)


# ----------------------------------------------------------------- git checkout


def test_git_checkout_moves_to_a_revision_and_refuses_non_commit_ids(tmp_path):
    def git(*a, cwd=tmp_path / "w"):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *a], cwd=cwd,
                              check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / "w").mkdir()
    git("init", "-q")
    (tmp_path / "w" / "c.yaml").write_text("a: 1\n")
    git("add", "-A"); git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (tmp_path / "w" / "c.yaml").write_text("a: 2\n")
    git("commit", "-qam", "two")
    head, changed = orch.git_checkout(str(tmp_path / "w" / "c.yaml"), first)
    assert (head, changed) == (first, True)
    assert (tmp_path / "w" / "c.yaml").read_text() == "a: 1\n"
    assert orch.git_checkout(str(tmp_path / "w" / "c.yaml"), first[:10]) == (first, False)
    with pytest.raises(orch.GitError):
        orch.git_checkout(str(tmp_path / "w" / "c.yaml"), "--upload-pack=evil")
    (tmp_path / "plain").mkdir()
    assert orch.git_checkout(str(tmp_path / "plain"), "") == ("", False)


# ----------------------------------------------------------------- the runner, loaded by Salt


def _runners(tmp_path: Path, catalog: Path):
    import salt.config
    import salt.loader

    opts = salt.config.master_config(None)
    opts.update({"root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
                 "sock_dir": str(tmp_path / "sock"), "extension_modules": str(tmp_path / "ext"),
                 "runner_dirs": [str(REPO / "_runners")], "ext_pillar": [{"anycastlb": {"catalog": str(catalog)}}]})
    return salt.loader.runner(opts)


def test_runner_plan_refuses_a_bad_catalog_with_no_steps(tmp_path, campus_catalog):
    def edit(d):
        d["services"]["www"]["cluster"] = "nosuch"
    runners = _runners(tmp_path, _edited(tmp_path, campus_catalog, edit))
    ret = runners["anycastlb.plan"](runtime=False)
    assert ret["result"] is False and ret["steps"] == []
    assert any("nosuch" in e for e in ret["errors"])
    assert runners.pack["__context__"]["retcode"] == 1
    lint = runners["anycastlb.lint"]()
    assert lint["result"] is False and "nothing is applied" in lint["comment"]


def test_runner_compares_with_the_catalog_deployed_last(tmp_path, campus_catalog):
    catalog = tmp_path / "live" / "campus.yaml"
    catalog.parent.mkdir()
    catalog.write_text(campus_catalog.read_text())
    runners = _runners(tmp_path, catalog)
    first = runners["anycastlb.plan"](runtime=False)
    assert "no deployed catalog recorded" in first["comment"]
    assert next(s for s in first["steps"] if s["node"] == "lb1")["actions"][0] == "drain"
    rec = runners["anycastlb.mark_deployed"](from_plan=True)
    assert rec["result"] is True and rec["deployed"].endswith("campus.yaml")
    data = yaml.safe_load(catalog.read_text())
    data["services"]["intranet"]["backends"]["web1"]["weight"] = 80
    catalog.write_text(yaml.safe_dump(data))
    second = runners["anycastlb.plan"](runtime=False)
    assert "compared with the catalog deployed last" in second["comment"]
    lb1 = next(s for s in second["steps"] if s["node"] == "lb1")
    assert lb1["actions"] == ["remember", "apply", "verify", "announced"], lb1
    assert runners["anycastlb.plan"](runtime=False, drain="always")["steps"][2]["actions"][0] == "drain"
    # the record is the catalog as it was, not the live file
    assert "weight: 80" not in Path(rec["deployed"]).read_text()
    # after a highstate outside the orchestration: record the current catalog
    now = runners["anycastlb.mark_deployed"]()
    assert "current catalog" in now["comment"] and "weight: 80" in Path(now["deployed"]).read_text()
    assert runners["anycastlb.mark_deployed"](from_plan=True)["result"] is False, "no plan since"


def test_runner_plan_of_a_good_catalog(tmp_path, campus_catalog):
    ret = _runners(tmp_path, campus_catalog)["anycastlb.plan"](runtime=False)
    assert ret["result"] is True
    assert [s["node"] for s in ret["steps"]][:3] == ["rr1", "rr2", "lb1"]
