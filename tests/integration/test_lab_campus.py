"""The campus catalog in the lab, end to end: real Salt, real daemons, real traffic from a client.

One lab for the module (``lab up`` of the shipped example, about a minute here). Every
request comes from the lab's own client or campus namespaces, to documentation
addresses, bounded in count and time.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


@pytest.fixture(scope="module")
def lab(campus_lab_factory):
    with campus_lab_factory("labtest") as the_lab:
        print(the_lab.up_output)
        print(f"lab up took {the_lab.up_seconds:.1f} s")
        yield the_lab


@pytest.fixture(scope="module")
def fleet(lab):
    from anycastlb.compiler import compile_catalog
    return compile_catalog(lab.catalog)


@pytest.fixture(scope="module")
def status(lab, fleet):
    from anycastlb.lab import fleet as fl
    return fl.status(lab, fleet)


def test_lab_up_within_budget(lab):
    assert "0 failed" in lab.up_output
    assert lab.up_seconds < 180, f"lab up took {lab.up_seconds:.0f} s (budget 3 minutes)"


def test_every_service_answers_through_its_vip(status):
    by = {(p["service"], p["address"], p["port"], p["source"]): p for p in status["probes"]}
    # www: http redirects, https serves with the lab's certificate, v4 and v6.
    for vip in ("192.0.2.10", "2001:db8:1::10"):
        assert by[("www", vip, 80, "client")]["ok"], by[("www", vip, 80, "client")]
        assert "301 -> https://www.example.org/" in by[("www", vip, 80, "client")]["detail"]
        assert by[("www", vip, 443, "client")]["ok"] and by[("www", vip, 443, "client")]["detail"].startswith("200")
    # intranet: refused from the outside client, served to a campus host.
    assert not by[("intranet", "192.0.2.11", 80, "client")]["ok"]
    assert by[("intranet", "192.0.2.11", 80, "salt")]["ok"]
    # imap over tcp to the external responders.
    for port in (143, 993):
        assert by[("imap", "192.0.2.20", port, "client")]["detail"].startswith(f"connected: mail1 {port}")
    # kdc over udp and tcp, v4 and v6, answered by a KDC node from the VIP.
    for vip in ("192.0.2.88", "2001:db8:1::88"):
        for port in (88, 464):
            for kind in ("udp", "tcp"):
                p = next(x for x in status["probes"] if x["address"] == vip and x["port"] == port
                         and x["kind"] == kind)
                assert p["ok"] and " kdc" in " " + p["detail"].split(": ", 1)[1], p
    assert all(p["ok"] == p["allowed"] for p in status["probes"])


def test_drained_lb3_announces_nothing_but_keeps_its_sessions(lab, status):
    assert status["announcers"]["192.0.2.10/32"] == ["lb1", "lb2"]
    assert all("lb3" not in nodes for nodes in status["announcers"].values())
    for rr in ("rr1", "rr2"):
        out = lab.exec(rr, ["birdc", "-s", "/run/bird/bird.ctl", "show", "protocols"]).stdout
        lines = [line for line in out.splitlines() if "lb3" in line]
        assert len(lines) == 2 and all("Established" in line for line in lines), out


def test_drained_backend_web2_gets_no_new_sessions(lab, fleet):
    from anycastlb.lab import fleet as fl
    spec = {"service": "intranet", "kind": "http", "address": "192.0.2.11", "port": 80,
            "host": "intranet.example.org", "path": "/healthz", "timeout": 2.0}
    results = fl.run_probes(lab, "salt", [spec] * 20)
    served_by = {r["detail"].split()[-1] for r in results}
    assert all(r["ok"] for r in results)
    assert served_by == {"web1"}, served_by
    # www has both backends active: both serve.
    spec = {**spec, "service": "www", "address": "192.0.2.10", "port": 443, "kind": "https",
            "host": "www.example.org", "cafile": str(lab.statedir / "pki" / "campus-wildcard.crt")}
    assert {r["detail"].split()[-1] for r in fl.run_probes(lab, "client", [spec] * 10)} == {"web1", "web2"}


def test_client_reaches_no_port_the_catalog_does_not_open(lab, fleet):
    from anycastlb.lab.fleet import PYTHON
    addresses = ["192.0.2.10", "192.0.2.11", "192.0.2.20", "192.0.2.88", "2001:db8:1::10", "2001:db8:1::88",
                 "198.51.100.21", "198.51.100.31", "198.51.100.11", "198.51.100.2", "198.51.100.51"]
    ports = sorted(set(range(1, 1025)) | {3784, 4505, 4506, 5665, 8080, 8404})
    spec = json.dumps({"addresses": addresses, "ports": ports, "timeout": 1.5})
    r = lab.exec("client", [PYTHON, "-m", "anycastlb.lab.probe", "--scan", "-"], input=spec, timeout=300,
                 cwd=str(lab.repo))
    found = json.loads(r.stdout)
    print("open from the client:", {a: p for a, p in found.items() if p})
    assert found == {
        "192.0.2.10": [80, 443], "192.0.2.11": [], "192.0.2.20": [143, 993], "192.0.2.88": [88, 464],
        "2001:db8:1::10": [80, 443], "2001:db8:1::88": [88, 464],
        "198.51.100.21": [], "198.51.100.31": [], "198.51.100.11": [], "198.51.100.2": [], "198.51.100.51": []}


def test_haproxy_backend_states(status):
    assert status["haproxy"]["intranet-8080"] == {"web1": "UP", "web2": "DRAIN"}
    assert status["haproxy"]["www-8080"] == {"web1": "UP", "web2": "UP"}
    assert status["haproxy"]["imap-143"] == {"mail1": "UP", "mail2": "UP"}


def test_icinga2_reports_every_check_ok(status):
    ic = status["icinga"]
    assert ic and len(ic) > 40
    bad = {k: v for k, v in ic.items() if v["state"] != "OK"}
    assert not bad, bad
    assert "vip-www!announcers www 192.0.2.10" in ic


def test_catalog_change_reaches_the_client_without_a_failed_request(lab, fleet):
    """A new service and a backend weight, applied with state.apply under a bounded load: 0 failures."""
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl
    assert Path(lab.catalog).resolve() != CAMPUS.resolve()
    cafile = str(lab.statedir / "pki" / "campus-wildcard.crt")
    targets = [
        {"kind": "https", "address": "192.0.2.10", "port": 443, "host": "www.example.org", "path": "/healthz",
         "cafile": cafile, "timeout": 2.0},
        {"kind": "https", "address": "2001:db8:1::10", "port": 443, "host": "www.example.org",
         "path": "/healthz", "cafile": cafile, "timeout": 2.0},
        {"kind": "http", "address": "192.0.2.10", "port": 80, "host": "www.example.org", "expect": "301",
         "timeout": 2.0},
        {"kind": "tcp", "address": "192.0.2.20", "port": 143, "timeout": 2.0},
        {"kind": "udp", "address": "192.0.2.88", "port": 88, "timeout": 2.0},
    ]
    stop = lab.statedir / "load.stop"
    spec = {"targets": targets, "interval": 0.005, "duration": 150, "max_requests": 30000,
            "stop_file": str(stop)}
    from anycastlb.lab.fleet import PYTHON
    load = subprocess.Popen(lab.argv("client", [PYTHON, "-m", "anycastlb.lab.probe", "--load", "-"],
                                     cwd=str(lab.repo)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    load.stdin.write(json.dumps(spec))
    load.stdin.close()
    try:
        time.sleep(2)
        text = Path(lab.catalog).read_text()
        text = text.replace("web1: {weight: 100}", "web1: {weight: 80}")
        text += ("\n  api:\n    extends: web\n    vip: 192.0.2.12\n    cluster: edge\n"
                 "    backends: [web1, web2]\n    apache: {server_name: api.example.org}\n")
        Path(lab.catalog).write_text(text)
        new = compile_catalog(lab.catalog)
        t0 = time.monotonic()
        summary = fl.apply(lab)
        fl.wait_converged(lab, new)
        print(f"state.apply of the change: {time.monotonic() - t0:.1f} s, {summary}")
        api = {"service": "api", "kind": "http", "address": "192.0.2.12", "port": 80, "host": "api.example.org",
               "path": "/healthz", "timeout": 2.0}
        deadline = time.monotonic() + 30
        while not (res := fl.run_probes(lab, "client", [api]))[0]["ok"] and time.monotonic() < deadline:
            time.sleep(1)
        assert res[0]["ok"] and "api" in res[0]["detail"], res
        time.sleep(2)
    finally:
        stop.touch()
        out = load.stdout.read()
        load.wait(timeout=60)
    result = json.loads(out)
    print(f"load during the change: {result['requests']} requests in {result['seconds']} s, "
          f"{result['failed']} failed")
    assert result["requests"] > 1000
    assert result["failed"] == 0, result["failures"]
    cfg = lab.read_file("lb1", "/etc/haproxy/haproxy.cfg")
    assert "server web1 198.51.100.31:8080 check weight 80" in cfg
