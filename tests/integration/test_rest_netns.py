"""nftables, apache2 and Icinga2 for real, in network namespaces.

Two namespaces per test, ``aclbrn<hex4>t`` (a catalog node) and ``aclbrn<hex4>c`` (its
clients), joined by one veth pair; only documentation prefixes are used and nothing
is bridged or routed to a host interface. Every daemon's files come from the
renderers through ``apply_daemon`` into a private temp root; daemons run with
explicit paths under that root. Teardown kills only the PIDs started here and
deletes only our namespaces.

What a user would see:
- the node's ruleset (``nft -f`` of the rendered file) lets a client reach exactly
  the TCP and UDP ports the catalog opens for that client's source, and no other
  (ports 1-1024 plus every port of the model, every node and VIP address);
- web1's apache answers each vhost by Host, with the node's name, and the health
  path with 200; an unknown Host is refused;
- Icinga2 (mon1's rendered config, cut down to web1's checks) reports the backend
  OK, then CRITICAL (a notification in its log) when apache is stopped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from anycastlb.apply import apply_daemon
from anycastlb.compiler import compile_catalog, copy_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "nft", "apache2", "icinga2")),
                       reason="needs ip, nft, apache2 and icinga2"),
]

OUTSIDER = ("203.0.113.50", "2001:db8:ff::50")
CAMPUS = ("198.51.100.77", "2001:db8:100::77")
EXTRA_PORTS = {179, 3784, 3785, 4505, 4506, 8080, 8404}
TCP_TIMEOUT = 0.5
UDP_WAIT = 0.8

RESPONDER = textwrap.dedent("""\
    # TCP: one dual-stack listener per port (an accepted connection answers from the address
    # it was sent to). UDP: one socket per port and address, so that every answer leaves from
    # the address the probe was sent to (a wildcard socket would answer from the node's
    # address and open conntrack entries that let later probes in as "established").
    import resource, selectors, socket, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    ports = [int(p) for p in sys.argv[1].split(",")]
    addrs = sys.argv[2].split(",")
    for port in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "tcp")
        for a in addrs:
            u = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((a, port))
            u.setblocking(False)
            sel.register(u, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == "tcp":
                    c, _ = s.accept()
                    c.close()
                else:
                    data, peer = s.recvfrom(512)
                    s.sendto(data, peer)
            except OSError:
                pass
""")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


class Pair:
    """A node namespace and a client namespace joined by a veth pair; our PIDs; our temp dirs."""

    def __init__(self, node: dict[str, Any], clients: list[str]) -> None:
        self.prefix = f"aclbrn{secrets.token_hex(2)}"
        self.node_ns, self.client_ns = f"{self.prefix}t", f"{self.prefix}c"
        self.node = node
        self.clients = clients
        self.pids: list[subprocess.Popen[str]] = []
        self.dirs: list[str] = []

    def tempdir(self) -> Path:
        d = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        os.chmod(d, 0o755)  # apache's children (www-data) read the document roots below
        self.dirs.append(d)
        return Path(d)

    def up(self) -> None:
        for ns in (self.node_ns, self.client_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{self.prefix}t", "type", "veth", "peer", "name", f"{self.prefix}c")
        for ns, dev in ((self.node_ns, f"{self.prefix}t"), (self.client_ns, f"{self.prefix}c")):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "link", "set", dev, "name", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        m = self.node
        t = self.node_ns
        self.addr(t, m["address"])
        if m.get("address6"):
            self.addr(t, m["address6"])
        self.addr(t, "203.0.113.1")
        self.addr(t, "2001:db8:ff::1")
        for vip in ((m.get("bgp") or {}).get("vips") or []):
            a = ipaddress.ip_address(vip["address"])
            sh("ip", "-n", t, "addr", "add", f"{a}/{a.max_prefixlen}", "dev", "lo")
        for a in self.clients:
            self.addr(self.client_ns, a)
        sh("ip", "-n", self.client_ns, "route", "add", "192.0.2.0/24", "via", m["address"])
        if m.get("address6"):
            sh("ip", "-n", self.client_ns, "-6", "route", "add", "2001:db8:1::/64", "via", m["address6"])
        time.sleep(0.3)

    @staticmethod
    def addr(ns: str, a: str) -> None:
        ip = ipaddress.ip_address(a)
        if ip.version == 4:
            sh("ip", "-n", ns, "addr", "add", f"{a}/24", "dev", "eth0")
        else:
            sh("ip", "-n", ns, "addr", "add", f"{a}/64", "dev", "eth0", "nodad")

    def spawn(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, start_new_session=True, **kw)
        self.pids.append(p)
        return p

    def stop(self, p: subprocess.Popen[str]) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def down(self) -> None:
        for p in self.pids:
            try:
                self.stop(p)
            except ProcessLookupError:
                pass
        for ns in (self.node_ns, self.client_ns):
            sh("ip", "netns", "del", ns, check=False)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(campus_catalog):
    return compile_catalog(campus_catalog)


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for p in made:
        p.down()


# ------------------------------------------------------------------ firewall port scan


def expected_open(model: dict[str, Any], src: str, dst: str, proto: str, ports: list[int]) -> set[int]:
    """What the catalog opens for this source and destination, from the model (not from the ruleset)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)

    def within(addr: Any, nets: list[str]) -> bool:
        return not nets or any(addr in ipaddress.ip_network(n, strict=False) for n in nets)

    out: set[int] = set()
    for r in model["firewall"]["rules"]:
        if r["protocol"] == proto and within(s, r["sources"]) and within(d, r["destinations"]):
            out |= {p for p in ports if not r["ports"] or p in r["ports"]}
    return out


async def tcp_scan(src: str, targets: list[str], ports: list[int]) -> dict[str, set[int]]:
    gate = asyncio.Semaphore(1024)  # bounded: a SYN burst must not overflow the neighbour queue

    async def one(dst: str, port: int) -> tuple[str, int, bool]:
        async with gate:
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(dst, port, local_addr=(src, 0)), TCP_TIMEOUT)
                w.close()
                return dst, port, True
            except (OSError, asyncio.TimeoutError):
                return dst, port, False

    res = await asyncio.gather(*(one(d, p) for d in targets for p in ports))
    out: dict[str, set[int]] = {d: set() for d in targets}
    for d, p, ok in res:
        if ok:
            out[d].add(p)
    return out


def udp_scan(src: str, targets: list[str], ports: list[int]) -> dict[str, set[int]]:
    """Ports of each target that echo a datagram (a socket of its own per target)."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    out: dict[str, set[int]] = {d: set() for d in targets}
    for d in targets:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.setblocking(False)
            for _ in range(2):  # a second round for anything lost, never for what the firewall drops
                for p in ports:
                    if p not in out[d]:
                        s.sendto(f"{d}|{p}".encode(), (d, p))
                deadline = time.monotonic() + UDP_WAIT
                while time.monotonic() < deadline:
                    try:
                        data, _ = s.recvfrom(512)
                    except BlockingIOError:
                        time.sleep(0.01)
                        continue
                    dst, port = data.decode().split("|")
                    out[dst].add(int(port))
    return out


SCAN_SCRIPT = textwrap.dedent("""\
    import asyncio, json, sys
    sys.path.insert(0, {repo!r})
    from tests.integration.test_rest_netns import tcp_scan, udp_scan
    src, targets, ports = sys.argv[1], sys.argv[2].split(","), [int(p) for p in sys.argv[3].split(",")]  # noqa
    tcp = asyncio.run(tcp_scan(src, targets, ports))
    # a lost SYN is not retransmitted within the timeout: the ports any rule names are
    # probed once more (a second probe cannot get through a drop, so "no other port" holds)
    for d, extra in asyncio.run(tcp_scan(src, targets, [int(p) for p in sys.argv[4].split(",")])).items():
        tcp[d] |= extra
    udp = udp_scan(src, targets, ports)
    print(json.dumps({{"tcp": {{d: sorted(v) for d, v in tcp.items()}}, "udp": {{d: sorted(v) for d, v in udp.items()}}}}))
""")


@pytest.mark.parametrize("node", ["lb1", "web1", "kdc1"])
def test_client_reaches_exactly_the_ports_the_catalog_opens(fleet, pairs, node):
    import json

    m = fleet.nodes[node]
    special = [("mon1", "198.51.100.51", "2001:db8:100::51"), ("rr1", "198.51.100.11", "2001:db8:100::11"),
               ("lb2", "198.51.100.22", "2001:db8:100::22")]
    sources = {"outsider": OUTSIDER, "campus": CAMPUS, **{n: (a, b) for n, a, b in special if n != node}}
    # mon1 first: the primary address of the client side
    clients = [a for pair in sorted(sources.values(), key=lambda x: x[0] != "198.51.100.51") for a in pair]
    pair = Pair(m, clients)
    pairs.append(pair)
    pair.up()
    rule_ports = sorted({p for r in m["firewall"]["rules"] for p in r["ports"]})
    ports = sorted(set(range(1, 1025)) | EXTRA_PORTS | set(rule_ports))
    targets4 = [m["address"]] + [v["address"] for v in (m.get("bgp") or {}).get("vips", []) if ":" not in v["address"]]
    targets6 = [m["address6"]] + [v["address"] for v in (m.get("bgp") or {}).get("vips", []) if ":" in v["address"]]
    resp = pair.spawn(pair.node_ns, [sys.executable, "-c", RESPONDER, ",".join(map(str, ports)),
                                     ",".join(targets4 + targets6)], stdout=subprocess.PIPE)
    assert resp.stdout is not None and resp.stdout.readline().strip() == "ready"
    # the node's ruleset, rendered and loaded exactly as production does
    root = pair.tempdir()
    res = apply_daemon("nftables", m, root=str(root), control=None)
    assert res.result is True, res.comment
    sh("ip", "netns", "exec", pair.node_ns, "nft", "-f", str(root / "etc/nftables.d/anycastlb.nft"))
    listed = sh("ip", "netns", "exec", pair.node_ns, "nft", "list", "ruleset").stdout
    assert "table inet anycastlb" in listed and "policy drop" in listed

    repo = str(Path(__file__).resolve().parents[2])
    summary = []
    mismatches = []
    for name, (src4, src6) in sources.items():
        for src, targets in ((src4, targets4), (src6, targets6)):
            for dst in targets:  # neighbours resolved both ways before the scan (echo is always accepted)
                sh("ip", "netns", "exec", pair.client_ns, "ping", "-c1", "-W1", "-I", src, dst)
            out = sh("ip", "netns", "exec", pair.client_ns, sys.executable, "-c", SCAN_SCRIPT.format(repo=repo),
                     src, ",".join(targets), ",".join(map(str, ports)), ",".join(map(str, rule_ports))).stdout
            seen = json.loads(out)
            for proto in ("tcp", "udp"):
                for dst in targets:
                    want = expected_open(m, src, dst, proto, ports)
                    got = set(seen[proto][dst])
                    summary.append(f"{node} {name:8} {src:18} -> {dst:16} {proto}: {sorted(got)}")
                    if got != want:
                        mismatches.append(f"{name} {src} -> {dst} {proto}: open {sorted(got)}, catalog {sorted(want)}")
    print("\n".join(summary))
    assert not mismatches, "\n".join(mismatches)
    # the scan saw something open (it is not vacuous) and re-applying replaces the table whole
    assert any("[]" not in line for line in summary)
    sh("ip", "netns", "exec", pair.node_ns, "nft", "-f", str(root / "etc/nftables.d/anycastlb.nft"))
    assert sh("ip", "netns", "exec", pair.node_ns, "nft", "list", "ruleset").stdout == listed


# ------------------------------------------------------------------ apache2 backend, then Icinga2 on it


def apache_env(root: Path) -> str:
    run = root / "run/apache2"
    for d in (run, root / "var/log/apache2"):
        d.mkdir(parents=True, exist_ok=True)
    conf = root / "etc/apache2"
    return (f". {conf}/envvars; export APACHE_RUN_DIR={run} APACHE_LOCK_DIR={run} APACHE_PID_FILE={run}/apache2.pid "
            f"APACHE_LOG_DIR={root}/var/log/apache2; ")


def start_apache(pair: Pair, root: Path) -> subprocess.Popen[str]:
    conf = root / "etc/apache2"
    p = pair.spawn(pair.node_ns, ["sh", "-c", apache_env(root) +
                                  f"exec apache2 -d {conf} -f {conf}/apache2.conf -DFOREGROUND"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if get(pair, "198.51.100.21", pair.node["address"], 8080, "/healthz", "www.example.org", timeout=0.5):
            return p
        time.sleep(0.1)
    raise AssertionError(f"apache did not answer: {(root / 'var/log/apache2/error.log').read_text()}")


def get(pair: Pair, src: str, dst: str, port: int, path: str, host: str, timeout: float = 2.0
        ) -> tuple[int, dict[str, str], str] | None:
    script = textwrap.dedent(f"""\
        import http.client, json
        c = http.client.HTTPConnection({dst!r}, {port}, timeout={timeout}, source_address=({src!r}, 0))
        try:
            c.request("GET", {path!r}, headers={{"Host": {host!r}}})
            r = c.getresponse()
            print(json.dumps([r.status, dict(r.getheaders()), r.read().decode()]))
        except OSError as exc:
            print("null")
    """)
    import json
    out = sh("ip", "netns", "exec", pair.client_ns, sys.executable, "-c", script).stdout
    res = json.loads(out)
    return None if res is None else (res[0], res[1], res[2])


def test_backend_apache_and_icinga_see_it_up_then_down(fleet, pairs):
    web1 = fleet.nodes["web1"]
    pair = Pair(web1, ["198.51.100.51", "2001:db8:100::51", "198.51.100.21", "2001:db8:100::21", *OUTSIDER])
    pairs.append(pair)
    pair.up()
    root = pair.tempdir()
    assert apply_daemon("nftables", web1, root=str(root), control=None).result is True
    sh("ip", "netns", "exec", pair.node_ns, "nft", "-f", str(root / "etc/nftables.d/anycastlb.nft"))
    shutil.copytree("/etc/apache2", root / "etc/apache2", symlinks=True)
    res = apply_daemon("apache2", web1, root=str(root), control=None)
    assert res.result is True, res.comment
    apache = start_apache(pair, root)

    for src, dst in (("198.51.100.21", "198.51.100.31"), ("2001:db8:100::21", "2001:db8:100::31")):
        for svc, host in (("www", "www.example.org"), ("intranet", "intranet.example.org")):
            status, headers, body = get(pair, src, dst, 8080, "/", host)
            assert status == 200 and f"<b>{svc}</b>" in body and "<b>web1</b>" in body
            assert headers["X-Served-By"] == "web1"
            status, _, body = get(pair, src, dst, 8080, "/healthz", host)
            assert (status, body) == (200, f"ok {svc} web1\n")
        status, _, body = get(pair, src, dst, 8080, "/", "unknown.example.org")
        assert status == 403 and "<b>" not in body
    assert get(pair, OUTSIDER[0], "198.51.100.31", 8080, "/", "www.example.org", timeout=0.5) is None
    # the health checks (every LB node, every check interval) stay out of the access log; the rest is in it
    for svc in ("www", "intranet"):
        log = (root / f"var/log/apache2/anycastlb-{svc}-access.log").read_text()
        assert log.count('"GET / HTTP') == 2 and "/healthz" not in log, log

    # Icinga2 on the client side (mon1's address), mon1's config cut down to web1's checks (and
    # mon1's own host, which carries the poller: the check is passive, one of the poller's probes)
    mon = copy_model(fleet.nodes["mon1"])
    mon["monitoring"]["hosts"] = [h for h in mon["monitoring"]["hosts"] if h["name"] in ("web1", "mon1")]
    mon["monitoring"]["vip_hosts"] = []
    mon["monitoring"]["checks"] = [c for c in mon["monitoring"]["checks"] if c["name"] == "backend www web1:8080"]
    mon["monitoring"]["intervals"] = {"check_s": 1, "retry_s": 1, "attempts": 1}
    assert len(mon["monitoring"]["checks"]) == 1
    iroot = pair.tempdir()
    shutil.copytree("/etc/icinga2", iroot / "etc/icinga2", symlinks=True)
    res = apply_daemon("icinga2", mon, root=str(iroot), control=None)
    assert res.result is True, res.comment
    (iroot / "etc/icinga2/conf.d/local-test.conf").write_text(
        'object FileLogger "test-notice" {\n  path = LogDir + "/notice.log"\n  severity = "notice"\n}\n')
    from anycastlb.render.icinga2 import COMMAND_PIPE, RUNTIME_DIRS, check_command
    for d in RUNTIME_DIRS.values():
        (iroot / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    # the poller's pipe (its check is passive: the poller probes it), as Debian's prepare-dirs makes it
    (iroot / COMMAND_PIPE.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    argv = [a for a in check_command(str(iroot)) if a != "-C"]
    logdir = iroot / "var/log/icinga2"
    icinga = pair.spawn(pair.client_ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_log(path: Path, needles: tuple[str, ...], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if all(n in line for n in needles):
                        return line
            assert icinga.poll() is None, (logdir / "icinga2.log").read_text()
            time.sleep(0.2)
        raise AssertionError(f"{needles!r} not in {path} within {timeout} s:\n"
                             + (path.read_text()[-3000:] if path.exists() else "(no file)"))

    ok = wait_log(logdir / "notice.log", ("'web1!backend www web1:8080'", "state change", "to OK"), 30)
    print("icinga, apache up:", ok)
    pair.stop(apache)
    crit = wait_log(logdir / "anycastlb-notifications.log", ("CRITICAL",), 30)
    print("icinga notification, apache stopped:", crit)
    fields = crit.split("\t")
    assert fields[1:6] == ["PROBLEM", "netops", "web1", "backend www web1:8080", "CRITICAL"]
    assert "Connection refused" in fields[6]
