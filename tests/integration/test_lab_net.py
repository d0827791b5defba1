"""The lab's foundation: namespaces, per-node filesystems, responders, peer BIRD, teardown.

Needs root (network and mount namespaces). One lab is shared by the module; its prefix
is unique (``aclbt<random>``) so it never meets another lab on the machine.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from anycastlb.lab import core, load_lab, nodefs, start_peers, start_responder, up_network
from anycastlb.lab.peer import birdc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

CATALOG = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"
EXTERNAL = [("mail1", "203.0.113.25"), ("mail2", "203.0.113.26")]
NODES = ["salt", "rr1", "rr2", "lb1", "lb2", "lb3", "web1", "web2", "kdc1", "kdc2", "mon1"]

# Run in the client's namespace: connect over TCP (send a line) and UDP, print what came back.
PROBE = r"""
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"ping\n"); s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(100)
        if not chunk: break
        data += chunk
else:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b"ping", (host, port)); data = s.recv(100)
sys.stdout.write(data.decode())
"""


def _prefix() -> str:
    return "aclbt" + secrets.token_hex(2)


def _leftovers(prefix: str, statedir: Path) -> list[str]:
    """Namespaces, mounts, processes and files a lab with ``prefix`` could have left."""
    out = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(prefix + "-")] \
        if os.path.isdir("/run/netns") else []
    out += [f"mount {m}" for m in nodefs.mounts_under(statedir)]
    if statedir.exists():
        out.append(f"dir {statedir}")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(statedir).encode() in cmd or f"/run/netns/{prefix}-".encode() in cmd:
                out.append(f"process {pid} {cmd[:80]!r}")
    return out


@pytest.fixture(scope="module")
def lab():
    prefix = _prefix()
    t0 = time.monotonic()
    lab = up_network(CATALOG, prefix=prefix, external=EXTERNAL)
    print(f"\nnetwork + node filesystems up in {time.monotonic() - t0:.2f} s")
    try:
        yield lab
    finally:
        lab.down()
    assert _leftovers(prefix, lab.statedir) == []


def test_every_node_pings_the_peer_v4_and_v6(lab):
    for node in NODES:
        r = lab.exec(node, ["sh", "-c", "ping -c1 -W2 198.51.100.1 && ping -c1 -W2 2001:db8:100::1"])
        assert r.returncode == 0, f"{node}: {r.stdout}{r.stderr}"


def test_client_reaches_a_node_through_the_peer(lab):
    for addr in ("198.51.100.21", "2001:db8:100::21"):
        route = lab.exec("client", ["ip", "route", "get", addr]).stdout
        assert ("via 203.0.113.1" in route) or ("via 2001:db8:203::1" in route), route
        r = lab.exec("client", ["ping", "-c1", "-W2", addr])
        assert r.returncode == 0, r.stdout + r.stderr
    # The external backends sit on the client net and route through the peer too.
    assert lab.exec("mail1", ["ping", "-c1", "-W2", "198.51.100.21"]).returncode == 0


def test_namespaces_only_hold_lab_addresses(lab):
    for name in lab.hosts:
        out = lab.exec(name, ["ip", "-o", "addr", "show", "scope", "global"]).stdout
        for line in out.splitlines():
            addr = line.split()[3]
            assert addr.startswith(("198.51.100.", "203.0.113.", "2001:db8:")), f"{name}: {line}"
        routes = lab.exec(name, ["ip", "route", "show", "default"]).stdout
        assert "198.51.100.1" in routes or "203.0.113.1" in routes or name in lab.peers, routes
    # The first peer has no default route: nothing can leave the lab through it.
    assert lab.exec("core1", ["ip", "route", "show", "default"]).stdout.strip() == ""


def test_node_files_are_private(lab):
    lab.write_file("lb1", "/etc/haproxy/x", "lb1 only\n")
    lab.write_file("lb1", "/run/haproxy/x", "lb1 only\n")
    lab.write_file("lb1", "/var/lib/haproxy/x", "lb1 only\n")
    assert lab.read_file("lb1", "/etc/haproxy/x") == "lb1 only\n"
    for path in ("/etc/haproxy/x", "/run/haproxy/x", "/var/lib/haproxy/x"):
        assert lab.exec("lb2", ["test", "-e", path]).returncode == 1, path
        assert not os.path.exists(path), path
    # The packaged trees are there, each node has its own name and hosts file.
    assert lab.exec("lb2", ["test", "-f", "/etc/apache2/apache2.conf"]).returncode == 0
    assert lab.exec("web1", ["test", "-d", "/var/lib/icinga2/api"]).returncode == 0
    assert lab.exec("lb2", ["hostname"]).stdout.strip() == "lb2"
    assert "198.51.100.2\tsalt" in lab.read_file("lb2", "/etc/hosts")
    assert lab.exec("lb2", ["sh", "-c", "ls /etc/ssh/ssh_host_* 2>/dev/null"]).stdout == ""


def test_responders_answer_tcp_and_udp_from_the_client(lab):
    start_responder(lab, "mail1", [143, 993], [])
    start_responder(lab, "kdc1", [88, 464], [88, 464])
    cases = [("203.0.113.25", 143, "tcp", "mail1 143\nping\n"),
             ("203.0.113.25", 993, "tcp", "mail1 993\nping\n"),
             ("198.51.100.41", 88, "udp", "kdc1 88\n"),
             ("2001:db8:100::41", 464, "udp", "kdc1 464\n"),
             ("2001:db8:100::41", 88, "tcp", "kdc1 88\nping\n")]
    deadline = time.monotonic() + 10
    for host, port, proto, want in cases:
        while True:
            r = lab.exec("client", ["python3", "-c", PROBE, host, str(port), proto], timeout=20)
            if r.stdout == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.stdout == want, f"{host} {port}/{proto}: {r.stdout!r} {r.stderr}"


# A stand-in route reflector, written for this test only: the real RR configuration is
# rendered by the project's BIRD renderer. It hands the peer two paths to each kdc VIP
# (add paths tx, next hop kept) and one prefix outside vip_pools that the peer must refuse.
STAND_IN_RR = """
router id 198.51.100.11;
log "{log}" all;
protocol device {{ }}
protocol static kdc1_4 {{ ipv4; route 192.0.2.88/32 via 198.51.100.41; route 203.0.113.200/32 via 198.51.100.41; }}
protocol static kdc2_4 {{ ipv4; route 192.0.2.88/32 via 198.51.100.42; }}
protocol static kdc1_6 {{ ipv6; route 2001:db8:1::88/128 via 2001:db8:100::41; }}
protocol static kdc2_6 {{ ipv6; route 2001:db8:1::88/128 via 2001:db8:100::42; }}
protocol bfd {{ interface "*" {{ interval 100 ms; multiplier 3; }}; }}
template bgp up {{ local as 64512; bfd on; connect delay time 1; }}
protocol bgp core1_v4 from up {{
  neighbor 198.51.100.1 as 64500;
  ipv4 {{ import none; export all; add paths tx; next hop keep; }};
}}
protocol bgp core1_v6 from up {{
  neighbor 2001:db8:100::1 as 64500;
  ipv6 {{ import none; export all; add paths tx; next hop keep; }};
}}
"""


def test_peer_bird_installs_ecmp_for_vips_only(lab):
    start_peers(lab)
    d = lab.statedir / "stand-in-rr1"
    d.mkdir()
    (d / "bird.conf").write_text(STAND_IN_RR.format(log=d / "bird.log"))
    lab.spawn("rr1", ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"),
                      "-P", str(d / "bird.pid")], "stand-in-bird")
    deadline = time.monotonic() + 20
    r4 = r6 = ""
    while time.monotonic() < deadline:
        r4 = lab.exec("core1", ["ip", "route", "show", "192.0.2.88"]).stdout
        r6 = lab.exec("core1", ["ip", "-6", "route", "show", "2001:db8:1::88"]).stdout
        if r4.count("nexthop") == 2 and r6.count("nexthop") == 2:
            break
        time.sleep(0.2)
    assert "via 198.51.100.41" in r4 and "via 198.51.100.42" in r4 and r4.count("nexthop") == 2, r4
    assert "via 2001:db8:100::41" in r6 and "via 2001:db8:100::42" in r6, r6
    assert lab.exec("core1", ["ip", "route", "show", "203.0.113.200"]).stdout.strip() == ""
    assert "Up" in birdc(lab, "core1", "show", "bfd", "sessions")
    protos = birdc(lab, "core1", "show", "protocols")
    assert "fleet_rr1_v4" in protos and "Established" in protos, protos


def test_up_twice_then_down_leaves_nothing(monkeypatch):
    prefix = _prefix()
    first = up_network(CATALOG, prefix=prefix, external=EXTERNAL)
    pid = first.spawn("lb1", ["sleep", "600"], "sleeper")
    stray = subprocess.Popen(first.argv("lb2", ["sleep", "600"]))  # unregistered, inside lb2
    second = up_network(CATALOG, prefix=prefix, external=EXTERNAL)  # tears the first down first
    assert not os.path.exists(f"/proc/{pid}") or "sleep" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert stray.wait(timeout=5) is not None
    assert second.exec("lb1", ["true"]).returncode == 0
    assert load_lab(prefix).statedir == second.statedir
    second.down()
    assert _leftovers(prefix, second.statedir) == []

    # A failure midway tears the half-built lab down before the error surfaces.
    calls = []

    def failing(*a, **kw):
        calls.append(a)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(*a, **kw)

    real = nodefs.setup_node
    monkeypatch.setattr(nodefs, "setup_node", failing)
    with pytest.raises(RuntimeError, match="injected"):
        up_network(CATALOG, prefix=prefix, external=EXTERNAL)
    assert _leftovers(prefix, core.default_statedir(prefix)) == []
