"""Taking things away (issue 13): what a removal leaves on the nodes, retiring a lost role, the plan's order."""
from __future__ import annotations

import copy
import os
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from anycastlb import minion
from anycastlb import orchestrate as orch
from anycastlb.compiler import compile_catalog
from anycastlb.model import model_hash
from anycastlb.render import HEADER, daemon, under
from anycastlb.secrets import load_secrets, slice_for


def _fleet(tmp_path: Path, campus_catalog: Path, edit: Callable[[dict[str, Any]], None] | None = None,
           name: str = "catalog.yaml") -> Any:
    data = yaml.safe_load(campus_catalog.read_text())
    if edit:
        edit(data)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return compile_catalog(p)


def _texts(fleet: Any, store: dict[str, Any]) -> dict[str, dict[str, str]]:
    """node → path → text of every file every node gets."""
    out: dict[str, dict[str, str]] = {}
    for n, m in fleet.nodes.items():
        files = minion.render(m, slice_for(m["secrets"], store), show_secrets=True)
        out[n] = {p: t for fs in files.values() for p, t in fs.items()}
    return out


# ----------------------------------------------------------------- removals: nothing behind in any node's config

def _drop_service(d: dict[str, Any]) -> None:
    del d["services"]["intranet"]


def _drop_vip(d: dict[str, Any]) -> None:
    d["services"]["www"]["vip"] = ["192.0.2.10"]


def _drop_port(d: dict[str, Any]) -> None:
    d["services"]["imap"]["ports"] = [143]


def _drop_backend(d: dict[str, Any]) -> None:
    d["services"]["kdc"]["backends"] = ["kdc1"]


@pytest.mark.parametrize("edit, gone", [
    (_drop_service, ["intranet", "192.0.2.11"]),
    (_drop_vip, ["2001:db8:1::10"]),
    (_drop_port, ["993"]),
], ids=["service", "vip", "port"])
def test_a_removed_part_of_a_service_leaves_no_object_on_any_node(tmp_path, campus_catalog, campus_secrets,
                                                                   edit, gone):
    store = load_secrets(campus_secrets)
    before = _texts(_fleet(tmp_path, campus_catalog, name="old.yaml"), store)
    after_fleet = _fleet(tmp_path, campus_catalog, edit)
    after = _texts(after_fleet, store)
    for word in gone:
        assert any(word in t for files in before.values() for t in files.values()), f"{word} was there before"
        # key material is random base64, which may spell any short word ("993"): not a config object
        left = sorted(f"{n}:{p}" for n, files in after.items() for p, t in files.items()
                      if word in t and not p.endswith((".pem", ".key")))
        assert left == [], f"{word} still in {left}"
    # and in the models: no frontend, backend, vhost, firewall rule, Icinga check, announcement
    for n, m in after_fleet.nodes.items():
        doc = json.dumps({k: m[k] for k in ("haproxy", "apache", "firewall", "monitoring", "health", "bgp")})
        for word in gone:
            if word.isdigit():
                assert all(int(word) not in r["ports"] for r in (m["firewall"] or {"rules": []})["rules"]
                           if "imap" in r["comment"]), n
            else:
                assert word not in doc, (n, word)


def test_a_removed_haproxy_backend_loses_its_vhost_its_server_line_and_its_firewall_hole(tmp_path, campus_catalog,
                                                                                         campus_secrets):
    def edit(d: dict[str, Any]) -> None:
        d["services"]["intranet"]["backends"] = {"web1": {"weight": 100}}
    store = load_secrets(campus_secrets)
    fleet = _fleet(tmp_path, campus_catalog, edit)
    web2 = _texts(fleet, store)["web2"]
    assert "/etc/apache2/sites-enabled/anycastlb-intranet.conf" not in web2
    assert "/etc/apache2/sites-enabled/anycastlb-www.conf" in web2, "its other service stays"
    assert not [r for r in fleet.nodes["web2"]["firewall"]["rules"] if "intranet" in r["comment"]]
    for lb in ("lb1", "lb2", "lb3"):
        servers = {b["name"]: [s["name"] for s in b["servers"]] for b in fleet.nodes[lb]["haproxy"]["backends"]}
        assert servers["intranet-8080"] == ["web1"] and servers["www-8080"] == ["web1", "web2"], servers
    names = [c["name"] for c in fleet.nodes["mon1"]["monitoring"]["checks"]]
    assert "backend intranet web1:8080" in names and "backend intranet web2:8080" not in names, "no Icinga object"


def test_a_removed_anycast_backend_gets_nothing_and_the_others_keep_announcing(tmp_path, campus_catalog):
    fleet = _fleet(tmp_path, campus_catalog, _drop_backend)
    kdc2 = fleet.nodes["kdc2"]
    assert kdc2["bgp"] is None and not (kdc2["health"] or {}).get("announcements")
    assert "anycast" not in kdc2["roles"]
    assert minion.wanted(kdc2) == ["nftables"], "it runs only its firewall now"
    assert "192.0.2.88/32" in fleet.nodes["kdc1"]["bgp"]["announce"]
    for rule in fleet.nodes["kdc2"]["firewall"]["rules"]:
        assert 88 not in rule["ports"] and 464 not in rule["ports"], rule


def test_owned_files_of_a_removed_service_go_with_its_docroot(tmp_path, campus_catalog):
    """apply's removal: the vhost, the index page and the health file, and the docroot left empty."""
    from anycastlb.apply import plan, remove_file

    old = _fleet(tmp_path, campus_catalog, name="old.yaml").nodes["web1"]
    new = _fleet(tmp_path, campus_catalog, _drop_service).nodes["web1"]
    spec = daemon("apache2")
    for f in spec.render(old, {"certificates": {}, "bgp_passwords": {}}, str(tmp_path / "root")):
        target = Path(under(str(tmp_path / "root"), f.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    docroot = tmp_path / "root" / "var/www/anycastlb/intranet"
    assert (docroot / "healthz").exists() and (docroot / "index.html").exists()
    _, removes, _ = plan(spec, new, {"certificates": {}, "bgp_passwords": {}}, str(tmp_path / "root"))
    assert sorted(Path(p).relative_to(tmp_path / "root").as_posix() for p in removes) == [
        "etc/apache2/sites-enabled/anycastlb-intranet.conf",
        "var/www/anycastlb/intranet/healthz", "var/www/anycastlb/intranet/index.html"]
    for p in removes:
        remove_file(p, spec, str(tmp_path / "root"))
    assert not docroot.exists(), "the empty docroot went too"
    assert (tmp_path / "root" / "var/www/anycastlb/www/index.html").exists(), "the other service stays"


# ----------------------------------------------------------------- retiring what a node no longer runs


class Recorder:
    """A service control that records what it is told; ``running`` daemons run until stopped."""

    mode = "systemd"

    def __init__(self, running: set[str], enabled: set[str], lo: list[str]) -> None:
        self.calls: list[str] = []
        self.up, self.enabled, self.lo = set(running), set(enabled), list(lo)
        self.prefix: list[str] = []

    def running(self, name: str) -> bool:
        return name in self.up

    def stop(self, name: str) -> str:
        self.calls.append(f"stop {name}")
        self.up.discard(name)
        return f"{name} stopped"

    def unload(self, name: str) -> str:
        self.calls.append(f"unload {name}")
        self.up.discard(name)
        return f"{name} unloaded"

    def disable(self, name: str) -> str:
        if name not in self.enabled:
            return ""
        self.calls.append(f"disable {name}")
        self.enabled.discard(name)
        return f"{name} disabled"

    def _run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if argv[:2] == ["ip", "-j"]:
            info = [{"local": a.split("/")[0], "prefixlen": int(a.split("/")[1])} for a in self.lo]
            return subprocess.CompletedProcess(argv, 0, json.dumps([{"addr_info": info}]), "")
        self.calls.append(" ".join(argv))
        if argv[:3] == ["ip", "addr", "del"]:
            self.lo.remove(argv[3])
        return subprocess.CompletedProcess(argv, 0, "", "")


def _install(root: Path, model: dict[str, Any], secrets: dict[str, Any]) -> list[str]:
    """Every file of every daemon of ``model`` written under ``root`` (as an apply leaves them)."""
    paths = []
    for name in minion.wanted(model):
        for f in daemon(name).render(model, secrets, str(root)):
            target = Path(under(str(root), f.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            paths.append(f.path)
    return paths


@pytest.fixture
def lb1_leaves_edge(tmp_path, campus_catalog, campus_secrets):
    """lb1 before (an LB node) and after it left cluster edge (nothing but its firewall)."""
    def edit(d: dict[str, Any]) -> None:
        d["clusters"]["edge"]["nodes"] = ["lb2", "lb3"]
    old = _fleet(tmp_path, campus_catalog, name="old.yaml").nodes["lb1"]
    new = _fleet(tmp_path, campus_catalog, edit).nodes["lb1"]
    root = tmp_path / "root"
    secrets = slice_for(old["secrets"], load_secrets(campus_secrets))
    _install(root, old, secrets)
    (root / "var/lib/anycastlb").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/anycastlb/drain").write_text("drained\nreason: orchestrate\n")
    (root / "run/anycastlb").mkdir(parents=True, exist_ok=True)
    (root / "run/anycastlb/healthd.state.json").write_text("{}")
    vips = sorted(f"{v['address']}/{32 if ':' not in v['address'] else 128}" for v in old["bgp"]["vips"])
    ctl = Recorder({"healthd", "haproxy", "bird", "nftables"}, {"healthd", "haproxy", "bird"},
                   ["127.0.0.1/8", *vips])
    return old, new, root, ctl, vips


def test_a_node_that_loses_its_role_stops_disables_and_removes_it(lb1_leaves_edge):
    old, new, root, ctl, vips = lb1_leaves_edge
    assert minion.unwanted(new)[:3] == ["healthd", "haproxy", "bird"]
    ret = minion.retire(new, ctl, str(root))
    assert ret["result"] is True, ret
    assert sorted(ret["changes"]) == ["bird", "haproxy", "healthd"]
    # the health agent first (stopping it withdraws), then what served; each disabled
    stops = [c for c in ctl.calls if c.startswith(("stop", "disable"))]
    assert stops == ["stop healthd", "disable healthd", "stop haproxy", "disable haproxy", "stop bird", "disable bird"]
    assert ctl.lo == ["127.0.0.1/8"], "its VIPs left lo"
    assert ret["changes"]["healthd"]["vips removed from lo"] == vips
    for path in ("etc/haproxy/haproxy.cfg", "etc/bird/bird.conf", "etc/anycastlb/healthd.json",
                 "var/lib/anycastlb/drain", "run/anycastlb/healthd.state.json"):
        assert not (root / path).exists(), path
    assert not list((root / "etc/haproxy/certs").glob("anycastlb-*.pem")) if (root / "etc/haproxy/certs").exists() \
        else True
    assert (root / "etc/nftables.d/anycastlb.nft").exists(), "its firewall stays: it still runs it"
    assert "nftables" in ctl.up
    again = minion.retire(new, ctl, str(root))
    assert again["result"] is True and again["changes"] == {} and "nothing to retire" in again["comment"]


def test_retire_under_test_changes_nothing(lb1_leaves_edge):
    _old, new, root, ctl, vips = lb1_leaves_edge
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    ret = minion.retire(new, ctl, str(root), test=True)
    assert ret["result"] is None
    assert ret["changes"]["healthd"]["would remove VIPs from lo"] == vips
    assert ctl.calls == [] and ctl.up == {"healthd", "haproxy", "bird", "nftables"}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_a_daemon_anycastlb_never_configured_is_left_alone(tmp_path):
    """The site's own apache2 on a node without role apache: no file of ours, so not touched."""
    (tmp_path / "etc/apache2/sites-enabled").mkdir(parents=True)
    (tmp_path / "etc/apache2/sites-enabled/000-default.conf").write_text("<VirtualHost *:80>\n</VirtualHost>\n")
    (tmp_path / "etc/haproxy").mkdir(parents=True)
    (tmp_path / "etc/haproxy/haproxy.cfg").write_text("global\n  # the site's own\n")
    ctl = Recorder({"apache2", "haproxy"}, {"apache2", "haproxy"}, [])
    ret = minion.retire(None, ctl, str(tmp_path))
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert ctl.calls == [] and (tmp_path / "etc/haproxy/haproxy.cfg").exists()


def test_decommission_takes_everything_and_the_firewall_last(lb1_leaves_edge, applied_model_record):
    old, _new, root, ctl, _vips = lb1_leaves_edge
    assert minion.record_model(old)["changes"] and applied_model_record.exists()
    ret = minion.retire(None, ctl, str(root))
    assert ret["changes"]["model record"] == {"removed": [str(applied_model_record)]}
    assert not applied_model_record.exists()
    assert ret["result"] is True, ret
    assert list(ret["changes"])[-1] == "nftables"
    assert ctl.calls.index("unload nftables") > ctl.calls.index("stop bird")
    left = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert not [p for p in left if HEADER in (root / p).read_text() or "anycastlb" in p], left
    assert ctl.up == set() and ctl.lo == ["127.0.0.1/8"]


# ----------------------------------------------------------------- the plan: leaving, removed, moved


def test_removed_node_is_decommissioned_first_and_a_leaving_node_drained_before_the_rrs(tmp_path, campus_catalog):
    def edit(d: dict[str, Any]) -> None:
        del d["nodes"]["lb2"]
        d["clusters"]["edge"]["nodes"] = ["lb1", "lb3"]
        d["services"]["kdc"]["backends"] = ["kdc1"]   # kdc2 stops being an anycast backend
    old = _fleet(tmp_path, campus_catalog, name="old.yaml")
    new = _fleet(tmp_path, campus_catalog, edit)
    steps = orch.plan(new, deployed=old)
    head = [(s.node, s.phase, s.actions) for s in steps[:2]]
    assert head == [("lb2", "leaving", ("decommission",)), ("kdc2", "leaving", ("drain",))]
    assert steps[2].node == "rr1", "before the route reflectors drop their sessions"
    later = next(s for s in steps[2:] if s.node == "kdc2")
    assert later.actions == ("apply", "verify") and "drained before" in later.note
    assert "lb2" not in {s.node for s in steps[1:]}
    assert all(s.hash == model_hash(new.nodes[s.node]) for s in steps if s.node in new.nodes)
    lb1 = next(s for s in steps if s.node == "lb1")
    assert lb1.actions == ("apply", "verify") and "only active announcer" in lb1.note, "lb2 is gone, lb3 drained"
    assert orch.out_at_once(steps, new) == {"edge": 0}


def test_a_service_moving_cluster_is_announced_before_it_is_withdrawn(tmp_path, campus_catalog):
    def add_core(d: dict[str, Any]) -> None:
        d["nodes"]["lb4"] = {"address": "198.51.100.24", "address6": "2001:db8:100::24"}
        d["nodes"]["lb5"] = {"address": "198.51.100.25", "address6": "2001:db8:100::25"}
        d["clusters"]["core"] = {"nodes": ["lb4", "lb5"]}
        d["services"]["dns"] = {"mode": "tcp", "vip": "192.0.2.53", "cluster": "core", "ports": [53],
                                "check": {"tcp": {}}, "backends": {"ns1": {"address": "203.0.113.53"}}}

    def move(d: dict[str, Any]) -> None:
        add_core(d)
        d["services"]["imap"]["cluster"] = "core"
    old = _fleet(tmp_path, campus_catalog, add_core, name="old.yaml")
    new = _fleet(tmp_path, campus_catalog, move)
    order = [s.node for s in orch.plan(new, deployed=old) if s.phase == "clusters"]
    assert order.index("lb4") < order.index("lb1"), order
    assert order.index("lb5") < order.index("lb1"), order
    # without the move, the clusters keep the order they first appear in
    same = [s.node for s in orch.plan(old, deployed=old) if s.phase == "clusters"]
    assert same.index("lb1") < same.index("lb4")
    by = {s.node: s for s in orch.plan(new, deployed=old)}
    assert by["lb1"].actions[0] == "drain" and "192.0.2.20" in by["lb1"].note


def test_a_service_that_becomes_anycast_is_announced_by_its_backends_before_the_cluster_withdraws(
        tmp_path, campus_catalog):
    def old(d: dict[str, Any]) -> None:
        d["services"]["dns"] = {"mode": "tcp", "vip": "192.0.2.53", "cluster": "edge", "ports": [53],
                                "check": {"tcp": {}}, "backends": {"ns1": {"address": "203.0.113.53"}}}

    def new(d: dict[str, Any]) -> None:
        d["services"]["dns"] = {"mode": "anycast", "vip": "192.0.2.53", "ports": ["53/udp", "53/tcp"],
                                "check": {"tcp": {"port": 53}}, "backends": ["kdc1", "kdc2"]}
    before = _fleet(tmp_path, campus_catalog, old, name="old.yaml")
    after = _fleet(tmp_path, campus_catalog, new)
    order = [s.node for s in orch.plan(after, deployed=before)]
    assert order.index("kdc2") < order.index("lb1"), order
    same = [s.node for s in orch.plan(before, deployed=before)]
    assert same.index("lb1") < same.index("kdc1"), "without the move, the clusters come first"


def test_the_plan_compares_each_node_with_what_it_last_applied(tmp_path, campus_catalog):
    """After a deploy that stopped half-way: lb1 runs the new catalog, lb2 the old one."""
    def edit(d: dict[str, Any]) -> None:
        d["services"]["www"]["vip"] = ["192.0.2.10"]
    old = _fleet(tmp_path, campus_catalog, name="old.yaml")
    new = _fleet(tmp_path, campus_catalog, edit)
    applied = {"lb1": copy.deepcopy(new.nodes["lb1"])}
    by = {s.node: s for s in orch.plan(new, deployed=old, applied=applied)}
    assert by["lb1"].actions == ("remember", "apply", "verify", "announced"), "lb1 runs it already"
    assert by["lb2"].actions[0] == "drain" and "stops announcing" in by["lb2"].note


def test_programs_stay_only_configs_and_state_are_retired(tmp_path, campus_catalog):
    """A node without monitoring finds the Icinga plugins (a program dir, maybe shared): not its icinga2."""
    plugins = tmp_path / "usr/local/lib/anycastlb/plugins"
    plugins.mkdir(parents=True)
    (plugins / "check_anycastlb_haproxy").write_text("#!/usr/bin/python3\n")
    ctl = Recorder(set(), set(), [])
    web1 = _fleet(tmp_path, campus_catalog).nodes["web1"]
    ret = minion.retire(web1, ctl, str(tmp_path))
    assert ret["changes"] == {} and (plugins / "check_anycastlb_haproxy").exists(), ret


@pytest.mark.skipif(os.geteuid() != 0, reason="loads a ruleset in a network namespace of its own")
def test_unloading_the_firewall_takes_every_table_of_ours_and_no_other(tmp_path, campus_catalog):
    import shlex

    from anycastlb.service import services

    lb1 = _fleet(tmp_path, campus_catalog).nodes["lb1"]
    (f,) = daemon("nftables").render(lb1, {"certificates": {}, "bgp_passwords": {}}, "/")
    (tmp_path / "lb1.nft").write_text(f.content)
    unload = shlex.join(services()["nftables"].unload)
    script = (f"nft add table inet site && nft -f {tmp_path / 'lb1.nft'} && nft list tables && echo -- && "
              f"{unload} && nft list tables && echo -- && {unload} && echo again ok")
    out = subprocess.run(["unshare", "--net", "--", "sh", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded, after, again = out.stdout.split("--\n")
    assert {"table inet anycastlb", "table ip anycastlb_steer", "table inet site"} <= set(loaded.splitlines())
    assert after.split() == ["table", "inet", "site"], "the site's own table stays"
    assert again.strip() == "again ok", "nothing of ours loaded: unloading still succeeds"
