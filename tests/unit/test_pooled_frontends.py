"""``clusters.<name>.frontends: pooled``: alike services share one HAProxy frontend per port.

What a user sees: the services of a pooled cluster whose frontends would be alike (same port,
mode, TLS certificates and frontend settings, same tenant) are served by one frontend that binds
all their VIPs and hands each connection to the backend of the VIP it reached; a service with a
frontend ``maxconn`` or raw frontend directives keeps its own; healthd, the monitoring and
``anycastlb show`` follow; the config passes ``haproxy -c``; a service added or removed leaves the
pool's name (and so its stats and monitoring objects) alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb.compiler import compile_catalog
from anycastlb.compiler.base import ANCHOR_PORTS
from anycastlb.render.haproxy import CONFIG, check, render
from anycastlb.render import nftables
from anycastlb.render.nftables import pool_rules
from anycastlb.service import previous_pool_rules

ROOT = Path(__file__).resolve().parents[2]

CATALOG: dict[str, Any] = yaml.safe_load("""
bgp: {asn: 64512}
vip_pools: [192.0.2.0/24, "2001:db8:1::/64"]
management: [198.51.100.0/24, "2001:db8:100::/64"]
nodes:
  rr1: {address: 198.51.100.11, address6: "2001:db8:100::11", roles: [route-reflector]}
  lb1: {address: 198.51.100.21, address6: "2001:db8:100::21"}
  lb2: {address: 198.51.100.22, address6: "2001:db8:100::22"}
  mon1: {address: 198.51.100.51, roles: [monitoring]}
clusters:
  edge: {nodes: [lb1, lb2], frontends: pooled}
services:
  alpha:
    mode: http
    vip: 192.0.2.10
    cluster: edge
    ports: [80]
    backend_port: 8080
    backends: {w1: {address: 203.0.113.31}}
  beta:
    mode: http
    vip: [192.0.2.11, "2001:db8:1::11"]
    cluster: edge
    ports: [80]
    backend_port: 8081
    backends: {w2: {address: 203.0.113.32}}
  capped:
    mode: http
    vip: 192.0.2.12
    cluster: edge
    ports: [80]
    backend_port: 8080
    haproxy: {maxconn: 100}
    backends: {w1: {address: 203.0.113.31}}
  slow:
    mode: http
    vip: 192.0.2.13
    cluster: edge
    ports: [80]
    backend_port: 8080
    haproxy: {timeouts: {client: 5s}}
    backends: {w1: {address: 203.0.113.31}}
  mail:
    mode: tcp
    vip: 192.0.2.14
    cluster: edge
    ports: [143]
    check: {tcp: {}}
    backends: {m1: {address: 203.0.113.25}}
""")


def compiled(tmp_path: Path, catalog: dict[str, Any], name: str = "catalog.yaml") -> dict[str, Any]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(catalog))
    return compile_catalog(path).nodes


def frontends(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in model["haproxy"]["frontends"]}


def pool_of(model: dict[str, Any], service: str, port: int) -> dict[str, Any]:
    [fe] = [f for f in model["haproxy"]["frontends"] if service in f["services"] and f["port"] == port]
    return fe


def test_alike_services_share_one_frontend_routed_by_destination(tmp_path: Path) -> None:
    lb1 = compiled(tmp_path, CATALOG)["lb1"]
    fe = pool_of(lb1, "alpha", 80)
    assert fe["name"].startswith("pool-80-")
    assert fe["services"] == ["alpha", "beta"]
    assert fe["binds"] == ["192.0.2.10", "192.0.2.11", "2001:db8:1::11"]
    assert fe["pool"] == [{"address": "192.0.2.10", "backend": "alpha-8080"},
                          {"address": "192.0.2.11", "backend": "beta-8081"},
                          {"address": "2001:db8:1::11", "backend": "beta-8081"}]
    assert fe["backend"] is None and fe["backends"] == ["alpha-8080", "beta-8081"]
    # a frontend maxconn is the service's own; other settings make another pool
    assert pool_of(lb1, "capped", 80)["name"] == "capped-80"
    slow = pool_of(lb1, "slow", 80)
    assert slow["name"].startswith("pool-80-") and slow["name"] != fe["name"] and slow["services"] == ["slow"]
    assert pool_of(lb1, "mail", 143)["name"].startswith("pool-143-")
    assert sorted(frontends(lb1)) == sorted([fe["name"], "capped-80", slow["name"], pool_of(lb1, "mail", 143)["name"]])


def test_without_the_setting_every_service_has_its_own(tmp_path: Path) -> None:
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    del cat["clusters"]["edge"]["frontends"]
    lb1 = compiled(tmp_path, cat)["lb1"]
    assert sorted(frontends(lb1)) == ["alpha-80", "beta-80", "capped-80", "mail-143", "slow-80"]
    assert all(f["pool"] is None for f in lb1["haproxy"]["frontends"])


def test_adding_and_removing_a_service_keeps_the_pools_name(tmp_path: Path) -> None:
    before = pool_of(compiled(tmp_path, CATALOG)["lb1"], "alpha", 80)
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    cat["services"]["gamma"] = {**cat["services"]["alpha"], "vip": "192.0.2.20",
                                "backends": {"w3": {"address": "203.0.113.33"}}}
    del cat["services"]["beta"]
    after = pool_of(compiled(tmp_path, cat)["lb1"], "alpha", 80)
    assert after["name"] == before["name"]
    assert after["services"] == ["alpha", "gamma"]
    assert {p["address"]: p["backend"] for p in after["pool"]} == {"192.0.2.10": "alpha-8080",
                                                                     "192.0.2.20": "gamma-8080"}


def test_healthd_watches_only_the_backend_of_each_vip(tmp_path: Path) -> None:
    lb1 = compiled(tmp_path, CATALOG)["lb1"]
    pool = pool_of(lb1, "alpha", 80)["name"]
    watch = {a["prefix"]: a["watch"] for a in lb1["health"]["announcements"]}
    assert watch["192.0.2.10/32"] == {"type": "haproxy", "frontends": [pool], "backends": ["alpha-8080"]}
    assert watch["192.0.2.11/32"] == {"type": "haproxy", "frontends": [pool], "backends": ["beta-8081"]}
    assert watch["2001:db8:1::11/128"]["backends"] == ["beta-8081"]


def test_monitoring_checks_the_pool_frontend_and_the_services_backend(tmp_path: Path) -> None:
    nodes = compiled(tmp_path, CATALOG)
    pool = pool_of(nodes["lb1"], "beta", 80)["name"]
    checks = {c["name"]: c for c in nodes["mon1"]["monitoring"]["checks"]}
    fe = checks["frontend beta-80 on lb1"]
    assert (fe["frontend"], fe["backend"]) == (pool, "beta-8081")
    assert {c["frontend"] for c in checks.values() if c.get("frontend")} == {
        pool, "capped-80", pool_of(nodes["lb1"], "slow", 80)["name"], pool_of(nodes["lb1"], "mail", 143)["name"]}


def test_each_tenant_has_its_own_pools(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "tests" / "data" / "tenants", tree)
    root = yaml.safe_load((tree / "fleet.yaml").read_text())
    root["clusters"]["edge"]["frontends"] = "pooled"
    # central IT's second service alike to its www: the two share; the library's alike repository does not
    root["services"]["www2"] = {**root["services"]["www"], "vip": "192.0.2.11",
                                "apache": {"server_name": "www2.example.org"}}
    (tree / "fleet.yaml").write_text(yaml.safe_dump(root))
    lb1 = compile_catalog(tree).nodes["lb1"]
    assert pool_of(lb1, "www", 80)["services"] == ["www", "www2"]
    repo = pool_of(lb1, "repository", 80)
    assert repo["name"].startswith("pool-80-") and repo["services"] == ["repository"]


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")
def test_rendered_pool_passes_haproxy_and_its_map_lists_each_vip(tmp_path: Path) -> None:
    lb1 = compiled(tmp_path, CATALOG)["lb1"]
    pool = pool_of(lb1, "alpha", 80)["name"]
    staging = tmp_path / "staging"
    files = render(lb1, {"certificates": {}, "bgp_passwords": {}}, str(staging))
    by_path = {f.path: f for f in files}
    cfg = by_path[CONFIG].content
    map_file = f"/etc/haproxy/maps/anycastlb-{pool}.map"
    assert by_path[map_file].content == ("192.0.2.10 alpha-8080\n192.0.2.11 beta-8081\n"
                                         "2001:db8:1::11 beta-8081\n")
    assert f"use_backend %[dst,map_ip({staging}{map_file})]" in cfg
    anchor = pool_of(lb1, "alpha", 80)["anchor"]
    # one loopback listener per family, nftables hands it the VIPs' connections
    assert f"bind 127.0.0.1:{anchor},[::1]:{anchor} transparent\n" in cfg
    assert "192.0.2.10:80" not in cfg
    for f in files:
        target = staging / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    result = check(str(staging), files)
    assert result.ok, result.output
    # a map the renderer did not write is refused by HAProxy itself: the check is real
    (staging / map_file.lstrip("/")).unlink()
    assert not check(str(staging), files).ok


def test_each_pool_has_a_loopback_port_of_its_own_that_outlives_its_members(tmp_path: Path) -> None:
    lb1 = compiled(tmp_path, CATALOG)["lb1"]
    pools = [f for f in lb1["haproxy"]["frontends"] if f["pool"]]
    anchors = [f["anchor"] for f in pools]
    assert len(pools) == 3 and len(set(anchors)) == 3
    assert all(a in ANCHOR_PORTS for a in anchors)
    assert all(f["anchor"] is None for f in lb1["haproxy"]["frontends"] if not f["pool"])
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    del cat["services"]["beta"]
    cat["services"]["gamma"] = {**cat["services"]["alpha"], "vip": "192.0.2.20"}
    assert pool_of(compiled(tmp_path, cat)["lb1"], "alpha", 80)["anchor"] == pool_of(lb1, "alpha", 80)["anchor"]


def test_a_node_whose_firewall_the_site_runs_binds_each_vip(tmp_path: Path) -> None:
    """No nftables of ours to hand the connections over: the pool binds its VIPs itself."""
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    cat["nodes"]["lb1"]["firewall"] = "unmanaged"
    nodes = compiled(tmp_path, cat)
    assert pool_of(nodes["lb1"], "alpha", 80)["anchor"] is None
    assert pool_of(nodes["lb2"], "alpha", 80)["anchor"] is not None
    cfg = {f.path: f for f in render(nodes["lb1"], {"certificates": {}, "bgp_passwords": {}}, "")}[CONFIG].content
    assert "bind 192.0.2.10:80,192.0.2.11:80,[2001:db8:1::11]:80 transparent\n" in cfg


def test_the_pools_chain_hands_each_vip_to_its_pools_listener(tmp_path: Path) -> None:
    lb1 = compiled(tmp_path, CATALOG)["lb1"]
    fe = pool_of(lb1, "alpha", 80)
    a, name = fe["anchor"], fe["name"]
    rules = [str(r) for r in pool_rules(lb1["haproxy"]) if f'"{name}"' in str(r)]
    assert rules == [
        f'ip daddr {{ 192.0.2.10, 192.0.2.11 }} tcp dport 80 socket transparent 1 accept comment "{name}"',
        f'ip daddr {{ 192.0.2.10, 192.0.2.11 }} tcp dport 80 tproxy ip to 127.0.0.1:{a} accept comment "{name}"',
        f'ip6 daddr 2001:db8:1::11 tcp dport 80 socket transparent 1 accept comment "{name}"',
        f'ip6 daddr 2001:db8:1::11 tcp dport 80 tproxy ip6 to [::1]:{a} accept comment "{name}"']


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
                    reason="needs root, nft and unshare (a throwaway network namespace)")
def test_the_kept_chain_is_the_loaded_one_rule_for_rule(tmp_path: Path) -> None:
    """What the nftables load keeps until HAProxy reloads is read back from ``nft list``: every rule
    of every pool, in order, and the kept chain loads again as it was."""
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    cat["services"]["alpha"]["vip"] = ["192.0.2.10"] + [f"2001:db8:1::{0x100 + i:x}" for i in range(40)]
    lb1 = compiled(tmp_path, cat)["lb1"]
    [nft] = nftables.render(lb1, {}, "")
    (tmp_path / "rules.nft").write_text(nft.content)
    listed = subprocess.run(["unshare", "--net", "sh", "-c", f"nft -f {tmp_path}/rules.nft && "
                             "nft list chain inet anycastlb pools"], capture_output=True, text=True, check=True)
    rules = previous_pool_rules(listed.stdout)
    assert len(rules) == len(pool_rules(lb1["haproxy"])) == 8
    assert [r.rsplit(" comment ", 1)[1] for r in rules] == [
        r.rsplit(" comment ", 1)[1] for r in pool_rules(lb1["haproxy"])]
    assert sum(r.count("2001:db8:1::") for r in rules) == 2 * 41
    kept = ("table inet kept {\n\tchain pools {\n\t\ttype filter hook prerouting priority mangle - 1;\n"
            + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n}\n")
    (tmp_path / "kept.nft").write_text(kept)
    again = subprocess.run(["unshare", "--net", "sh", "-c", f"nft -f {tmp_path}/kept.nft && "
                            "nft list chain inet kept pools"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert previous_pool_rules(again.stdout) == rules


def test_show_prints_where_each_vip_goes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.cli import main
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG))
    assert main(["show", str(path), "lb1"]) == 0
    pool = pool_of(compile_catalog(path).nodes["lb1"], "alpha", 80)["name"]
    line = next(x for x in capsys.readouterr().out.splitlines() if f"frontend {pool} " in x)
    assert line.endswith(":80 -> 192.0.2.10 -> alpha-8080, 192.0.2.11 -> beta-8081, 2001:db8:1::11 -> beta-8081")


def test_a_bad_value_is_one_error_where_it_is_written(tmp_path: Path) -> None:
    """Refused with file:line, cluster and key; the services of the refused cluster add no errors."""
    from anycastlb.errors import CatalogRefused
    cat = yaml.safe_load(yaml.safe_dump(CATALOG))
    cat["clusters"]["edge"]["frontends"] = "pool; rm -rf /"
    with pytest.raises(CatalogRefused) as exc:
        compiled(tmp_path, cat)
    [err] = exc.value.errors
    assert (err.file, err.key) == (str(tmp_path / "catalog.yaml"), "frontends") and err.line
    assert "cluster 'edge'" in str(err) and "expected 'service' or 'pooled'" in str(err)
