"""The generated catalog of benchmarks/scale.py compiles at the sizes it is measured at."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import shutil
from pathlib import Path

import pytest
import yaml

from anycastlb.compiler import compile_catalog

SCALE = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("n", [100, 300, 1000])
def test_scale_catalog_compiles_with_n_services_on_the_campus_nodes(scale, tmp_path, n):
    path = tmp_path / "campus.yaml"
    data = scale.scale_catalog(n)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet = compile_catalog(path)
    assert len(fleet.services) == n
    assert set(fleet.nodes) == set(yaml.safe_load(scale.CAMPUS.read_text())["nodes"])
    vips = [v for s in fleet.services.values() for v in s["vips"]]
    assert len(vips) == len(set(vips))
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network("192.0.2.0/24")
               or ipaddress.ip_address(v) in ipaddress.ip_network("2001:db8:1::/64") for v in vips)
    anycast = [v for s in fleet.services.values() if s["mode"] == "anycast" for v in s["vips"]]
    assert len(fleet.nodes["lb1"]["bgp"]["announce"]) == len(vips) - len(anycast)
    assert len(fleet.nodes["kdc1"]["bgp"]["announce"]) == len(anycast)
    modes = {m: sum(s["mode"] == m for s in fleet.services.values()) for m in ("http", "tcp", "anycast")}
    tls = sum(s["tls"] is not None for s in fleet.services.values())
    assert all(modes.values()) and tls, (modes, tls)
    vip_ports = sum(len(s["vips"]) * len(s["ports"]) for s in fleet.services.values())
    assert 3 * n <= vip_ports <= 3.5 * n   # about 3,000 VIP:ports at 1,000 services (issue 16)


def test_baseline_runs_a_process_per_check_as_icinga2_built_it(scale, campus_catalog):
    """The monitoring baseline ("before") = one process per passive check, each the command
    Icinga2 built from the same vars (ITL check_http / check_tcp, our Python plugins)."""
    import json

    from anycastlb.render import icinga2
    mon = compile_catalog(campus_catalog).nodes["mon1"]
    files = {f.path: f.content for f in icinga2.render(mon, {}, "/")}
    spec = json.loads(files[icinga2.POLL_SPEC])
    old = scale.old_plugin_commands(spec, Path("/p"))
    passive = re.findall(r'^  import "anycastlb-passive"', files[f"{icinga2.OURS}/services.conf"], re.M)
    assert sum(len(v) for v in old.values()) == len(passive)
    cmds = {" ".join(c) for v in old.values() for c in v}
    itl = "/usr/lib/nagios/plugins"
    assert f"{itl}/check_http -H www.example.org -I 192.0.2.10 -u /healthz -p 80 -e 301" in cmds
    assert (f"{itl}/check_http -H www.example.org -I 2001:db8:1::10 -u /healthz -p 443 -S --sni -C 30,14 -6"
            in cmds)
    assert f"{itl}/check_tcp -H 198.51.100.42 -p 88 -r crit -M warn -t 10" in cmds
    assert "/usr/bin/python3 /p/check_anycastlb_udp.py -H 198.51.100.42 -p 88 -s anycastlb-probe -t 5" in cmds
    assert {len(old[k]) > 0 for k in ("http", "https", "certificate", "tcp", "udp")} == {True}


def test_the_edge_cluster_pools_its_frontends_and_the_baseline_does_not(scale, tmp_path):
    """Measured with ``frontends: pooled``; the same-run baseline renders a frontend per service port."""
    counts = {}
    for pooled in (True, False):
        path = tmp_path / f"campus-{pooled}.yaml"
        path.write_text(yaml.safe_dump(scale.scale_catalog(300, pooled=pooled), sort_keys=False))
        counts[pooled] = len(compile_catalog(path).nodes["lb1"]["haproxy"]["frontends"])
    assert counts[False] >= 400 and counts[True] <= 10, counts


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")
def test_the_per_service_baseline_is_checked_by_haproxy(scale):
    assert scale.per_service_check_ms(100, runs=1) > 0
