"""Pooled frontends for real: one HAProxy frontend, each VIP's connections to its own service.

One network namespace (documentation prefixes on its ``lo`` only): a real HAProxy 2.6 in
master-worker mode and the node's nftables ruleset, applied through
:func:`anycastlb.apply.apply_daemon` in the production order (``nft -c`` and ``haproxy -c`` on the
staged files, then the load and the reload) by :class:`ServiceControl` in direct mode with the
node's files under a temp root; three Python web servers, each answering with its own name. The
cluster has ``frontends: pooled``, so the services share one frontend on port 80.

What a user would see:
- each VIP (IPv4 and IPv6) answers with its own service's backend, through the one pooled frontend;
- a service added while a client makes a request every 10 ms: the client loses none, the new
  VIP answers with its service, and the pool keeps its name;
- a service removed: its VIP no longer answers, the others still do;
- the pool listens on loopback only (no socket per VIP): nftables hands it each VIP's connections;
- the cluster back to a frontend per service, under load: no request lost, the map file gone; and
  pooled again, under load: no request lost.
About 10 s. Teardown kills only the PIDs started here and deletes only our namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from anycastlb.apply import apply_daemon
from anycastlb.compiler import compile_catalog

from netns_node import NetnsNode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "haproxy")), reason="needs ip and haproxy"),
]

VIPS = {"alpha": "192.0.2.10", "beta": "192.0.2.11", "gamma": "192.0.2.12"}
BETA6 = "2001:db8:1::11"   # beta's second VIP: the map matches IPv6 destinations too
WEB = {"alpha": "203.0.113.31", "beta": "203.0.113.32", "gamma": "203.0.113.33"}


def catalog(services: list[str], frontends: str = "pooled") -> str:
    doc: dict[str, Any] = {
        "bgp": {"asn": 64512}, "vip_pools": ["192.0.2.0/24", "2001:db8:1::/64"],
        "management": ["198.51.100.0/24", "2001:db8:100::/64"],
        "nodes": {"rr1": {"address": "198.51.100.11", "address6": "2001:db8:100::11", "roles": ["route-reflector"]},
                  "lb1": {"address": "198.51.100.21", "address6": "2001:db8:100::21"}},
        "clusters": {"edge": {"nodes": ["lb1"], "frontends": frontends}},
        "services": {s: {"mode": "http", "vip": [VIPS[s], BETA6] if s == "beta" else VIPS[s], "cluster": "edge", "ports": [80], "backend_port": 8080,
                         "check": {"http": {"path": "/"}, "interval": "200ms", "rise": 1, "fall": 2},
                         "backends": {f"{s}-web": {"address": WEB[s]}}} for s in services}}
    return yaml.safe_dump(doc)


# N requests, one connection each, 10 ms apart; prints how many failed and which bodies were seen.
CLIENT = textwrap.dedent("""
    import http.client, json, sys, time
    vip, n = sys.argv[1], int(sys.argv[2])
    fail, errors, bodies = 0, [], {}
    for i in range(n):
        try:
            c = http.client.HTTPConnection(vip, 80, timeout=2)
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read().decode().strip()
            c.close()
            bodies[body] = bodies.get(body, 0) + 1
            if r.status != 200:
                fail += 1; errors.append(r.status)
        except Exception as exc:
            fail += 1; errors.append(repr(exc))
        time.sleep(0.01)
    print(json.dumps({"requests": n, "failures": fail, "errors": errors[:5], "bodies": bodies}))
""")


class Node(NetnsNode):
    """lb1 with the three web servers; ``apply(services)`` compiles and applies that catalog."""

    def __init__(self) -> None:
        super().__init__("pl", catalog(["alpha", "beta"]))

    def up(self) -> None:
        self.namespace(*VIPS.values(), *WEB.values())
        subprocess.run(["ip", "-n", self.ns, "addr", "add", f"{BETA6}/128", "dev", "lo", "nodad"], check=True)
        for name, addr in WEB.items():
            www = self.base / name
            www.mkdir()
            (www / "index.html").write_text(f"{name}\n")
            self.spawn([sys.executable, "-m", "http.server", "8080", "--bind", addr, "--directory", str(www)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def apply(self, services: list[str], frontends: str = "pooled") -> dict[str, Any]:
        path = self.base / "catalog.yaml"
        path.write_text(catalog(services, frontends))
        self.model = compile_catalog(path).nodes["lb1"]
        for daemon in ("nftables", "haproxy"):   # the production order: the firewall first
            res = apply_daemon(daemon, self.model, {"certificates": {}, "bgp_passwords": {}},
                               root=self.root, control=self.ctl)
            assert res.result is True, res.comment
        return self.model

    def listening(self) -> set[str]:
        """The tcp addresses HAProxy listens on in the namespace (``ss -ltn``)."""
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hltn"], capture_output=True, text=True,
                             check=True).stdout
        return {line.split()[3] for line in out.splitlines()}

    def previous_pools_kept(self) -> bool:
        """Whether the pools chain of before the last nftables load is still loaded."""
        return subprocess.run(["ip", "netns", "exec", self.ns, "nft", "list", "table", "inet", "anycastlb_prev"],
                              capture_output=True).returncode == 0

    def client(self, vip: str, n: int) -> subprocess.Popen[str]:
        return self.spawn([sys.executable, "-c", CLIENT, vip, str(n)], stdout=subprocess.PIPE)

    def get(self, vip: str, n: int = 1) -> dict[str, Any]:
        out, _ = self.client(vip, n).communicate(timeout=60)
        return json.loads(out)

    def until_up(self, vip: str) -> dict[str, Any]:
        """The VIP's answers once HAProxy's first check passed (rise 1 at 200 ms)."""
        for _ in range(50):
            got = self.get(vip)
            if got["failures"] == 0:
                return got
        return got


@pytest.fixture
def node() -> Iterator[Node]:
    with Node() as n:
        yield n


def pool_name(model: dict[str, Any]) -> str:
    [fe] = model["haproxy"]["frontends"]
    return str(fe["name"])


def test_one_frontend_hands_each_vip_to_its_service_and_follows_changes(node: Node) -> None:
    model = node.apply(["alpha", "beta"])
    pool = pool_name(model)
    assert pool.startswith("pool-80-")
    cfg = Path(node.root, "etc/haproxy/haproxy.cfg").read_text()
    assert cfg.count("\nfrontend ") == 2   # the stats frontend and the pool
    # no socket per VIP: the pool listens on loopback, nftables hands it the VIPs' connections
    anchor = model["haproxy"]["frontends"][0]["anchor"]
    assert {a for a in node.listening() if not a.endswith(":8080")} == {
        f"127.0.0.1:{anchor}", f"[::1]:{anchor}", "198.51.100.21:8404"}
    assert node.until_up(VIPS["alpha"])["bodies"] == {"alpha": 1}
    assert node.until_up(VIPS["beta"])["bodies"] == {"beta": 1}
    assert node.get(BETA6)["bodies"] == {"beta": 1}

    # gamma joins while alpha is in use: a reload, no request lost, the pool keeps its name
    workers = node.ctl.haproxy_workers()
    client = node.client(VIPS["alpha"], 150)
    model = node.apply(["alpha", "beta", "gamma"])
    out, _ = client.communicate(timeout=60)
    during = json.loads(out)
    assert node.ctl.haproxy_workers() != workers
    assert during["failures"] == 0 and during["bodies"] == {"alpha": 150}, during
    assert pool_name(model) == pool
    assert node.until_up(VIPS["gamma"])["bodies"] == {"gamma": 1}

    # beta leaves: its VIP no longer answers, the others do
    model = node.apply(["alpha", "gamma"])
    assert pool_name(model) == pool
    for vip in (VIPS["beta"], BETA6):
        gone = node.get(vip)
        assert gone["failures"] == 1 and "ConnectionRefused" in gone["errors"][0], gone
    assert node.get(VIPS["alpha"])["bodies"] == {"alpha": 1}
    assert node.get(VIPS["gamma"])["bodies"] == {"gamma": 1}
    map_text = Path(node.root, f"etc/haproxy/maps/anycastlb-{pool}.map").read_text()
    assert map_text == f"{VIPS['alpha']} alpha-8080\n{VIPS['gamma']} gamma-8080\n"

    # back to a frontend per service, under load: nftables stops handing the VIPs to the pool before
    # HAProxy binds them; the chain it replaced is kept until the reload, so none is lost
    client = node.client(VIPS["gamma"], 100)
    model = node.apply(["alpha", "gamma"], frontends="service")
    out, _ = client.communicate(timeout=60)
    during = json.loads(out)
    assert during["failures"] == 0 and during["bodies"] == {"gamma": 100}, during
    assert sorted(f["name"] for f in model["haproxy"]["frontends"]) == ["alpha-80", "gamma-80"]
    assert not list(Path(node.root, "etc/haproxy/maps").glob("*.map"))
    assert node.get(VIPS["alpha"])["bodies"] == {"alpha": 1}
    assert {f"{VIPS['alpha']}:80", f"{VIPS['gamma']}:80"} <= node.listening()
    assert not node.previous_pools_kept()

    # and pooled again, under load: nftables hands the VIPs over only once their own sockets are gone
    client = node.client(VIPS["alpha"], 100)
    model = node.apply(["alpha", "gamma"])
    out, _ = client.communicate(timeout=60)
    during = json.loads(out)
    assert during["failures"] == 0 and during["bodies"] == {"alpha": 100}, during
    assert f"{VIPS['alpha']}:80" not in node.listening()
    assert node.get(VIPS["gamma"])["bodies"] == {"gamma": 1}
    assert not node.previous_pools_kept()
