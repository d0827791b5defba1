"""The traffic path for real: HAProxy, BIRD and healthd applied through apply_daemon in network namespaces.

Two namespaces joined by one veth pair (documentation prefixes only, nothing
touches a host interface): ``<p>-lb`` runs an LB node (HAProxy master-worker,
anycastlb-healthd, BIRD; two python backends on 203.0.113.31/.32), ``<p>-rr``
a route reflector's BIRD. Every daemon is started and reloaded by
:class:`anycastlb.service.ServiceControl` in direct mode with the node's files
under its own temp root (paths inside the configs point there too), so no
production path of the host is used. Teardown kills only the PIDs started
here and deletes only our two namespaces.

What a user would see:
- config changes reloaded under a bounded stream of requests lose none;
- a config the checker refuses, and one HAProxy itself refuses at reload,
  change nothing and lose no request;
- HAProxy dies → its VIP leaves the route reflector's table within a second.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from anycastlb.apply import apply_daemon
from anycastlb.compiler import compile_catalog
from anycastlb.poll import poll_until
from anycastlb.service import ServiceControl, parse_show_proc, unix_query

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "bird", "birdc", "haproxy")),
                       reason="needs ip, bird, birdc and haproxy"),
]

VIP = "192.0.2.10"
LB, RR = "198.51.100.21", "198.51.100.11"
WEB = {"web1": "203.0.113.31", "web2": "203.0.113.32"}

CATALOG = """\
bgp: {asn: 64512, bfd: {interval: 100ms, multiplier: 3}}
vip_pools: [192.0.2.0/24, "2001:db8:1::/64"]
management: [198.51.100.0/24]
nodes:
  rr1: {address: 198.51.100.11, roles: [route-reflector]}
  lb1: {address: 198.51.100.21}
clusters:
  edge: {nodes: [lb1]}
services:
  www:
    mode: http
    vip: 192.0.2.10
    cluster: edge
    ports: [80]
    backend_port: 8080
    check: {http: {path: /healthz}, interval: 200ms, rise: 1, fall: 2}
    backends:
      web1: {address: 203.0.113.31, weight: WEIGHT1}
      web2: {address: 203.0.113.32, STATE2}
"""

# A client in the LB namespace: N requests over about S seconds, one connection each, 1 s timeout.
CLIENT = textwrap.dedent("""
    import http.client, json, sys, time
    n, seconds, host = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    fail, errors, start = 0, [], time.monotonic()
    for i in range(n):
        due = start + i * seconds / n
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            c = http.client.HTTPConnection(host, 80, timeout=1)
            c.request("GET", "/healthz")
            r = c.getresponse(); r.read(); c.close()
            if r.status != 200:
                fail += 1; errors.append(r.status)
        except Exception as exc:
            fail += 1; errors.append(repr(exc))
    print(json.dumps({"requests": n, "failures": fail, "errors": errors[:5],
                      "seconds": round(time.monotonic() - start, 2)}))
""")


def catalog(tmp: Path, weight1: int = 100, state2: str = "active", ports: str = "[80]") -> dict[str, Any]:
    """The fleet's node models for one variant of the test catalog."""
    text = CATALOG.replace("WEIGHT1", str(weight1)).replace("STATE2", f"state: {state2}")
    text = text.replace("ports: [80]", f"ports: {ports}")
    path = tmp / f"catalog-{weight1}-{state2}-{len(ports)}.yaml"
    path.write_text(text)
    return compile_catalog(path).nodes


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


class Lab:
    """Our namespaces, roots and the PIDs we started (and nothing else)."""

    def __init__(self, base: Path) -> None:
        tag = secrets.token_hex(2)
        self.ns = {"lb": f"aclbtp{tag}-lb", "rr": f"aclbtp{tag}-rr"}
        self.base = base
        self.root = {k: str(base / k) for k in self.ns}
        self.ctl = {k: ServiceControl("direct", root=self.root[k], prefix=["ip", "netns", "exec", ns])
                    for k, ns in self.ns.items()}
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen[str]] = []

    def up(self) -> None:
        lb, rr = self.ns["lb"], self.ns["rr"]
        for ns in (lb, rr):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        veth_lb, veth_rr = f"{lb[:8]}l", f"{lb[:8]}r"
        sh("ip", "link", "add", veth_lb, "netns", lb, "type", "veth", "peer", "name", veth_rr, "netns", rr)
        sh("ip", "-n", lb, "addr", "add", f"{LB}/24", "dev", veth_lb)
        sh("ip", "-n", rr, "addr", "add", f"{RR}/24", "dev", veth_rr)
        sh("ip", "-n", lb, "link", "set", veth_lb, "up")
        sh("ip", "-n", rr, "link", "set", veth_rr, "up")
        docroot = self.base / "www"
        docroot.mkdir()
        (docroot / "healthz").write_text("ok\n")
        for addr in WEB.values():
            sh("ip", "-n", lb, "addr", "add", f"{addr}/32", "dev", "lo")
            p = subprocess.Popen(["ip", "netns", "exec", lb, sys.executable, "-m", "http.server", "8080",
                                  "--bind", addr, "--directory", str(docroot)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
            self.procs.append(p)
        for addr in WEB.values():
            wait_for(lambda a=addr: self.exec_ok("lb", [sys.executable, "-c",
                     f"import socket; socket.create_connection(('{a}', 8080), 0.2).close()"]), 5, f"backend {addr}")

    def exec_ok(self, node: str, argv: list[str]) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.ns[node], *argv], capture_output=True,
                              timeout=10).returncode == 0

    def daemon_pids(self) -> list[int]:
        """Every daemon pid our controls know of, HAProxy workers included."""
        pids = []
        for node, ctl in self.ctl.items():
            for d in ("healthd", "bird", "haproxy"):
                pid = ctl.pid(d)
                if pid:
                    pids.append(pid)
        try:
            info = parse_show_proc(unix_query(self.path("lb", "/run/haproxy/master.sock"), "show proc"))
            pids += [p for p, _ in info.workers] + list(info.old_workers)
        except (OSError, ValueError):
            pass
        return pids

    def path(self, node: str, path: str) -> str:
        return os.path.join(self.root[node], path.lstrip("/"))

    def down(self) -> None:
        for pid in set(self.daemon_pids() + self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def wait_for(pred: Any, timeout: float, what: str, since: float | None = None) -> float:
    """Poll ``pred`` every 20 ms until true; return the seconds it took (from the monotonic time
    ``since`` when given: the instant the awaited event was caused)."""
    polled = poll_until(pred, bool, timeout, 0.02, since)
    if not polled.done:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return polled.waited


def rr_has_vip(lab: Lab) -> bool:
    out = subprocess.run(["birdc", "-s", lab.path("rr", "/run/bird/bird.ctl"), "show", "route", "for",
                          f"{VIP}/32"], capture_output=True, text=True, timeout=5).stdout
    return f"{VIP}/32" in out


def backends_up(lab: Lab) -> bool:
    try:
        text = unix_query(lab.path("lb", "/run/haproxy/admin.sock"), "show stat -1 4 -1")
    except OSError:
        return False
    from anycastlb.answers.haproxy import parse_show_stat
    try:
        rows = parse_show_stat(text)
    except ValueError:
        return False
    return any(sv not in ("FRONTEND", "BACKEND") and row["status"].startswith("UP") for (_, sv), row in rows.items())


def server_state(lab: Lab, server: str) -> list[str]:
    """The ``show servers state`` fields of one server of backend www-8080."""
    text = unix_query(lab.path("lb", "/run/haproxy/admin.sock"), "show servers state www-8080")
    head = next(line for line in text.splitlines() if line.startswith("# be_id")).lstrip("# ").split()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == len(head) and fields[head.index("srv_name")] == server:
            return fields
    raise AssertionError(f"server {server} not in:\n{text}")


def srv_field(lab: Lab, server: str, name: str) -> str:
    text = unix_query(lab.path("lb", "/run/haproxy/admin.sock"), "show servers state www-8080")
    head = next(line for line in text.splitlines() if line.startswith("# be_id")).lstrip("# ").split()
    return server_state(lab, server)[head.index(name)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = Path(tempfile_short())
    the_lab = Lab(base)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
        shutil.rmtree(base, ignore_errors=True)


def tempfile_short() -> str:
    """A short temp dir (Unix socket paths are limited to 108 bytes)."""
    import tempfile
    return tempfile.mkdtemp(prefix="aclbtp-", dir="/tmp")


@pytest.fixture(scope="module")
def running(lab: Lab) -> Lab:
    """HAProxy, healthd and BIRD up on the LB, BIRD on the RR, the VIP announced."""
    models = catalog(lab.base)
    for node, model in (("lb", models["lb1"]), ("rr", models["rr1"])):
        for d in ("haproxy", "healthd", "bird"):
            if d == "haproxy" and model["haproxy"] is None or d == "healthd" and node == "rr":
                continue
            res = apply_daemon(d, model, root=lab.root[node], control=lab.ctl[node])
            assert res.result is True, res.comment
    wait_for(lambda: backends_up(lab), 10, "HAProxy backends UP")
    took = wait_for(lambda: rr_has_vip(lab), 15, "the VIP in the route reflector's table")
    print(f"\nVIP announced to the RR {took * 1000:.0f} ms after the backends were up")
    return lab


def client(lab: Lab, n: int = 2000, seconds: float = 10.0) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", lab.ns["lb"], sys.executable, "-c", CLIENT, str(n),
                             str(seconds), VIP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out)


def test_vip_on_lo_and_announced(running: Lab) -> None:
    out = sh("ip", "-n", running.ns["lb"], "-j", "addr", "show", "dev", "lo").stdout
    assert f'"local":"{VIP}"' in out.replace(" ", "")
    assert rr_has_vip(running)


def test_reloads_under_load_lose_no_request(running: Lab) -> None:
    lab = running
    variants = [dict(weight1=90), dict(weight1=80, state2="drain"), dict(weight1=70), dict(weight1=100)]
    load = client(lab)
    time.sleep(1.0)
    reloaded = []
    for v in variants:
        models = catalog(lab.base, **v)
        t0 = time.monotonic()
        res = apply_daemon("haproxy", models["lb1"], root=lab.root["lb"], control=lab.ctl["lb"])
        assert res.result is True and res.reloaded, res.comment
        reloaded.append(round((time.monotonic() - t0) * 1000))
        if v.get("state2") == "drain":
            # The catalog's drain is in the config: weight 0 in the running server state.
            assert srv_field(lab, "web2", "srv_uweight") == "0"
        time.sleep(1.5)
    stats = finish(load)
    print(f"\n{len(variants)} HAProxy reloads (ms each: {reloaded}) under {stats['requests']} requests in "
          f"{stats['seconds']} s: {stats['failures']} failed {stats['errors']}")
    assert stats["failures"] == 0
    # Back to active: the config's weight wins over the saved state (weight 0) on reload.
    assert srv_field(lab, "web2", "srv_uweight") == "100"


def test_bird_reload_keeps_the_route(running: Lab) -> None:
    lab = running
    models = catalog(lab.base)
    model = json.loads(json.dumps(models["lb1"]))
    # A filter change (one more prefix it may announce): BIRD re-evaluates exports, sessions stay up.
    model["bgp"]["announce"].append("192.0.2.99/32")
    seen: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(rr_has_vip(lab))
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        time.sleep(0.3)
        res = apply_daemon("bird", model, root=lab.root["lb"], control=lab.ctl["lb"])
        time.sleep(1.0)
        back = apply_daemon("bird", models["lb1"], root=lab.root["lb"], control=lab.ctl["lb"])
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    assert res.result is True and res.reloaded, res.comment
    assert "reconfigur" in res.changes["reload"]
    assert back.result is True and back.reloaded, back.comment
    print(f"\n2 BIRD reconfigurations: the VIP was missing from the RR in {seen.count(False)} of {len(seen)} polls")
    assert len(seen) > 20 and all(seen)


def test_refused_configs_change_nothing_and_lose_nothing(running: Lab) -> None:
    lab = running
    cfg = Path(lab.path("lb", "/etc/haproxy/haproxy.cfg"))
    before = cfg.read_bytes()
    master = lab.ctl["lb"].pid("haproxy")
    load = client(lab, 1000, 5.0)
    # 1. The checker refuses: an unknown balance algorithm.
    bad = json.loads(json.dumps(catalog(lab.base)["lb1"]))
    bad["haproxy"]["backends"][0]["balance"] = "no-such-algorithm"
    res = apply_daemon("haproxy", bad, root=lab.root["lb"], control=lab.ctl["lb"])
    assert res.result is False and not res.reloaded
    assert "balance only supports" in res.comment  # HAProxy's own words, passed on
    assert cfg.read_bytes() == before
    # 2. The checker passes, HAProxy refuses at reload: port 8443 of the VIP is taken by someone else.
    squatter = subprocess.Popen(["ip", "netns", "exec", lab.ns["lb"], sys.executable, "-c",
                                 f"import socket,time; s=socket.socket(); s.bind(('{VIP}', 8443)); s.listen();"
                                 "time.sleep(60)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(squatter)
    time.sleep(0.5)
    res = apply_daemon("haproxy", catalog(lab.base, ports="[80, 8443]")["lb1"], root=lab.root["lb"],
                       control=lab.ctl["lb"])
    squatter.kill()
    assert res.result is False, res.comment
    assert "refused" in res.comment
    assert cfg.read_bytes() == before, "the previous file is restored"
    assert lab.ctl["lb"].pid("haproxy") == master
    stats = finish(load)
    print(f"\nrefused configs under {stats['requests']} requests: {stats['failures']} failed; "
          f"HAProxy said: {res.comment.splitlines()[-1][:200]}")
    assert stats["failures"] == 0
    # 3. BIRD: birdc configure on a config BIRD refuses (written behind apply's back) fails and is reported.
    conf = Path(lab.path("lb", "/etc/bird/bird.conf"))
    good = conf.read_text()
    conf.write_text(good + "\nthis is not bird syntax;\n")
    try:
        from anycastlb.service import ServiceError
        with pytest.raises(ServiceError, match="refused"):
            lab.ctl["lb"].reload_or_start("bird")
    finally:
        conf.write_text(good)
    assert rr_has_vip(lab)


def test_haproxy_death_withdraws_the_vip_fast(running: Lab) -> None:
    lab = running
    wait_for(lambda: rr_has_vip(lab), 10, "the VIP announced")
    master = lab.ctl["lb"].pid("haproxy")
    assert master
    t0 = time.monotonic()
    os.kill(master, signal.SIGKILL)
    took = wait_for(lambda: not rr_has_vip(lab), 5, "the VIP withdrawn from the route reflector", since=t0)
    print(f"\nHAProxy master killed -> VIP gone from the RR's table {took * 1000:.0f} ms after the kill(2)")
    assert took < 1.0
    # Restarted through the same path, it is announced again.
    res = apply_daemon("haproxy", catalog(lab.base)["lb1"], root=lab.root["lb"], control=lab.ctl["lb"])
    assert res.result is True and res.reloaded, res.comment
    back = wait_for(lambda: rr_has_vip(lab), 15, "the VIP announced again")
    print(f"HAProxy restarted -> VIP back in the RR's table in {back * 1000:.0f} ms")
