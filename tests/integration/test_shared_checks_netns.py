"""Shared health checks for real: servers that backends would check alike are checked once.

One network namespace (documentation prefixes on its ``lo`` only): a real HAProxy 2.6 applied
through :func:`anycastlb.apply.apply_daemon` and one Python web server that logs every request.
Services alpha and beta are in front of that server with the same HTTP check; gamma checks
another path. The compiler gives alpha's and beta's servers one check backend to ``track``.

What a user would see:
- the web server gets alpha's and beta's check path about as often as gamma's (one check
  each, not two), and HAProxy's stats say who tracks what;
- the server dies: alpha, beta and gamma go DOWN alike; it comes back: they come back;
- alpha's server set to maintenance in the catalog: alpha stops, beta (same check) serves on;
  set active again, alpha serves again.
About 10 s. Teardown kills only the PIDs started here and deletes only our namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from anycastlb.answers.haproxy import parse_show_stat
from anycastlb.apply import apply_daemon
from anycastlb.compiler import compile_catalog
from anycastlb.service import unix_query

from netns_node import NetnsNode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "haproxy")), reason="needs ip and haproxy"),
]

VIPS = {"alpha": "192.0.2.10", "beta": "192.0.2.11", "gamma": "192.0.2.12"}
WEB = "203.0.113.31"
PATHS = {"alpha": "/health", "beta": "/health", "gamma": "/other"}


def catalog(maintenance: tuple[str, ...] = ()) -> str:
    doc: dict[str, Any] = {
        "bgp": {"asn": 64512}, "vip_pools": ["192.0.2.0/24"],
        "management": ["198.51.100.0/24"],
        "nodes": {"rr1": {"address": "198.51.100.11", "roles": ["route-reflector"]},
                  "lb1": {"address": "198.51.100.21"}},
        "clusters": {"edge": {"nodes": ["lb1"]}},
        "services": {s: {"mode": "http", "vip": VIPS[s], "cluster": "edge", "ports": [80], "backend_port": 8080,
                         "check": {"http": {"path": PATHS[s]}, "interval": "100ms", "rise": 1, "fall": 2},
                         "backends": {"web1": {"address": WEB, **({"state": "maintenance"} if s in maintenance
                                                                 else {})}}}
                     for s in VIPS}}
    return yaml.safe_dump(doc)


class Node(NetnsNode):
    """lb1 and the web server (its request log in ``base/web.log``)."""

    def __init__(self) -> None:
        super().__init__("sc", catalog())
        self.log = self.base / "web.log"

    def up(self) -> None:
        self.namespace(*VIPS.values(), WEB)
        self.www = self.base / "www"
        self.www.mkdir()
        for name in ("index.html", "health", "other"):
            (self.www / name).write_text("web1\n")
        self.start_web()

    def start_web(self) -> None:
        """The web server, once it accepts connections (HAProxy's first check must find it)."""
        self.web = self.spawn([sys.executable, "-m", "http.server", "8080", "--bind", WEB, "--directory",
                               str(self.www)], stdout=subprocess.DEVNULL, stderr=self.log.open("a"))
        wait = ("import socket, time\nfor _ in range(200):\n    try:\n"
                f"        socket.create_connection(({WEB!r}, 8080), 1).close(); break\n"
                "    except OSError:\n        time.sleep(0.05)")
        self.spawn([sys.executable, "-c", wait]).wait(timeout=30)

    def apply(self, maintenance: tuple[str, ...] = ()) -> dict[str, Any]:
        path = self.base / "catalog.yaml"
        path.write_text(catalog(maintenance))
        self.model = compile_catalog(path).nodes["lb1"]
        res = apply_daemon("haproxy", self.model, {"certificates": {}, "bgp_passwords": {}},
                           root=self.root, control=self.ctl)
        assert res.result is True, res.comment
        return self.model

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        text = unix_query(os.path.join(self.root, "run/haproxy/admin.sock"), "show stat")
        return parse_show_stat(text, ("status", "check_status", "tracked"))

    def backend_states(self) -> dict[str, str]:
        return {px: row["status"] for (px, sv), row in self.stats().items() if sv == "BACKEND" and px in
                {f"{s}-8080" for s in VIPS}}

    def checked(self, timeout: float = 10.0) -> dict[tuple[str, str], str]:
        """Every server that runs a check of its own, once each has a verdict (HAProxy starts a
        server UP before its first check): ``(backend, server)`` → ``check_status``."""
        deadline = time.monotonic() + timeout
        while True:
            got = {k: r["check_status"].lstrip("* ") for k, r in self.stats().items()
                   if k[1] not in ("FRONTEND", "BACKEND") and not r["tracked"]}
            if all(v not in ("", "INI") for v in got.values()) or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def until(self, want: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (got := self.backend_states()) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def status(self, service: str) -> int:
        """What a client of the service's VIP gets: the HTTP status, 0 when refused or reset."""
        cmd = [sys.executable, "-c", "import sys, urllib.request, urllib.error\n"
               "try: print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
               "except urllib.error.HTTPError as e: print(e.code)\n"
               "except OSError: print(0)", f"http://{VIPS[service]}/"]
        out, _ = self.spawn(cmd, stdout=subprocess.PIPE).communicate(timeout=30)
        return int(out.strip())

    def requests(self, path: str) -> int:
        return sum(f'"GET {path} ' in line for line in self.log.read_text().splitlines())


@pytest.fixture
def node() -> Iterator[Node]:
    with Node() as n:
        yield n


def test_alike_checks_run_once_and_every_tracking_server_follows(node: Node) -> None:
    model = node.apply()
    [chk] = model["haproxy"]["checks"]
    assert chk["backends"] == ["alpha-8080", "beta-8080"]
    assert [s["name"] for s in chk["servers"]] == [f"{WEB}:8080"]
    cfg = Path(node.root, "etc/haproxy/haproxy.cfg").read_text()
    assert f"server web1 {WEB}:8080 track {chk['name']}/{WEB}:8080" in cfg
    assert cfg.count(f" track {chk['name']}/") == 2 and f"server web1 {WEB}:8080 check weight" in cfg   # gamma's own
    up = {f"{s}-8080": "UP" for s in VIPS}
    assert node.checked() == {(chk["name"], f"{WEB}:8080"): "L7OK", ("gamma-8080", "web1"): "L7OK"}
    assert node.until(up) == up
    assert {s: node.status(s) for s in VIPS} == {s: 200 for s in VIPS}
    rows = node.stats()
    assert rows[("alpha-8080", "web1")]["tracked"] == f"{chk['name']}/{WEB}:8080"
    assert rows[(chk["name"], f"{WEB}:8080")]["check_status"].lstrip("* ") == "L7OK"

    # one check for alpha and beta: the shared path is asked about as often as gamma's own
    before = {p: node.requests(p) for p in ("/health", "/other")}
    time.sleep(2.0)
    shared, own = (node.requests(p) - before[p] for p in ("/health", "/other"))
    assert own >= 5 and shared <= 1.5 * own, (shared, own)

    # the server dies: every backend that tracks it goes down with the one that checks it
    node.web.kill()
    node.web.wait(timeout=5)
    down = {k: "DOWN" for k in up}
    assert node.until(down) == down
    assert node.status("beta") == 503
    node.start_web()
    assert node.until(up) == up

    # alpha's server in maintenance: alpha stops, beta (same shared check) serves on
    node.apply(maintenance=("alpha",))
    states = node.until({**up, "alpha-8080": "DOWN"})
    assert states == {**up, "alpha-8080": "DOWN"}
    assert node.stats()[("alpha-8080", "web1")]["status"] == "MAINT"
    assert node.status("alpha") == 503 and node.status("beta") == 200

    # and back: alpha's server takes its state from the check it tracks again (not the MAINT/DOWN
    # HAProxy saved for it before the reload)
    node.apply()
    assert node.until(up) == up
    assert node.status("alpha") == 200
