"""The campus lab with FRR as the peer router (``lab up --peer frr``): the router guide's FRR
configuration (docs/routers.md) learns every announcing node's path for every VIP from both
route reflectors, installs them as one ECMP route, and runs BFD with them.

Real daemons throughout: the fleet is deployed by Salt as in every lab test; core1 runs
Debian's FRR (zebra, bfdd, bgpd) instead of BIRD.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("vtysh"), reason="FRR is not installed (apt-get install frr)")]


def kernel_nexthops(lab, peer: str, prefix: str) -> set[str]:
    fam = "-6" if ":" in prefix else "-4"
    out = lab.exec(peer, ["ip", fam, "route", "show", prefix]).stdout
    return set(re.findall(r"via (\S+)", out))


def test_frr_peer_learns_every_path_and_installs_ecmp():
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab.cli import temporary_lab
    from anycastlb.lab.peer import bgp_paths, vtysh

    prefix = ""
    try:
        with temporary_lab(tag="frr", peer="frr") as lab:
            prefix = lab.prefix
            assert "FRR on peer core1" in lab.up_output and "0 failed" in lab.up_output, lab.up_output
            fleet = compile_catalog(lab.catalog)
            rrs = [n for n in fleet.nodes if "route-reflector" in fleet.nodes[n]["roles"]]
            expected: dict[str, set[str]] = {}
            for nid in fleet.nodes:
                m = fleet.nodes[nid]
                for p in (m["bgp"] or {}).get("announce", []):
                    v6 = ipaddress.ip_network(p).version == 6
                    expected.setdefault(p, set()).add(m["address6"] if v6 else m["address"])
            assert expected and all(len(v) >= 2 for v in expected.values()), expected
            deadline = time.monotonic() + 60
            paths: dict[str, list[str]] = {}
            routes: dict[str, set[str]] = {}
            while time.monotonic() < deadline:
                paths = {p: bgp_paths(lab, "core1", p) for p in expected}
                routes = {p: kernel_nexthops(lab, "core1", p) for p in expected}
                if all(sorted(paths[p]) == sorted(list(expected[p]) * len(rrs)) and routes[p] == expected[p]
                       for p in expected):
                    break
                time.sleep(0.5)
            for p, want in expected.items():
                # every announcer's path, once from each route reflector (add-path), next hop kept
                assert sorted(paths[p]) == sorted(list(want) * len(rrs)), (p, paths[p])
                # one kernel route with every announcer as a next hop (ECMP)
                assert routes[p] == want, (p, routes[p])
            bfd = vtysh(lab, "core1", "show bfd peers brief")
            assert len(re.findall(r"\bup\b", bfd)) == 2 * len(rrs), bfd
            summary = vtysh(lab, "core1", "show bgp summary")
            assert summary.count("64512") >= 2 * len(rrs), summary
    finally:
        if prefix:
            left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                    if n.startswith(prefix + "-")]
            assert left == [], f"the lab left namespaces: {left}"
