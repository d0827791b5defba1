"""What flow steering costs: CPU per MB and per packet, flood against unicast, and packet sizes.

Five network namespaces of our own on one bridge (198.51.100.0/24; nothing on the host's
interfaces): a client and three LB nodes lb1–lb3 of one cluster, each with the VIP
192.0.2.20 on ``lo`` and the nftables file anycastlb renders for it from a three-node
catalog (firewall + steering tables, loaded with ``nft -f``). A listener on lb1 owns K
tcp connections from the client to the VIP:143. The client's interface sends one segment
per packet (``gso_max_segs 1``: 1500-byte packets on the wire, as a router forwards them,
not 64 KB GSO bursts). Each round sends the same bounded traffic (K × ``--mb`` MB, the
listener confirms every byte) in each of these cases, in a rotating order:

- **off**: no steering tables; the client's route to the VIP goes to lb1, the owner;
- **on, at the owner**: steering loaded, route to lb1 (what every packet pays: the match);
- **on, moved: flood** (the product): the route moved to lb2, as after a drain or an ECMP
  change: lb2 copies each packet to lb1 and lb3 (``dup to``) and drops it; lb1 accepts its
  copy, lb3 drops its copy (TTL 1);
- **on, moved: unicast** (a lab variant, not the product: lb2's rule rewritten to copy to
  lb1 only, as if lb2 knew the owner): what a unicast scheme would cost at best.

CPU: utime + stime of the client, of the owner's listener and of the kernel's ksoftirqd
threads over each case. This kernel has no IRQ time accounting, and veth delivers in the
sender's context, so the receive work of every namespace (conntrack, nftables, ``dup``,
the peers' receive and drop, the owner's TCP) is charged to these processes: measured
apart from the other work of a shared machine (``/proc/stat`` would count it all). Per MB
(the same bytes in every case), and per packet the client sent; the median over the
rounds with its range. Copies: lb2's steering counter and lb3's drop counter. Sizes: a
table of ours on each LB namespace counts packets to the VIP of exactly 1500 bytes and of
more: the copies reaching the owner must be the client's 1500-byte packets, none larger
(``dup`` does not encapsulate; no MSS change). Last, the same move without steering: how
many of the K connections lb2 resets.

Targets (exit 1 if missed):
- the owner's own packets with steering loaded cost at most 10 % more kernel CPU than
  with none (every packet of a node pays the match, all the time);
- a flooded packet costs at most 3× an unsteered one in kernel CPU with three nodes: it is
  received three times (lb2, lb1, lb3) instead of once, and the steering itself must add
  little beyond those receptions.

Run: ``sudo flock /work/wt/.lab.lock .venv/bin/python benchmarks/steering_cost.py`` (about
a minute; ``--rounds``, ``--mb``, ``--conns``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, need_root  # noqa: E402

from anycastlb.compiler import compile_catalog  # noqa: E402
from anycastlb.render import nftables  # noqa: E402

VIP, PORT, CLIENT = "192.0.2.20", 143, "198.51.100.200"
LBS = {"lb1": "198.51.100.21", "lb2": "198.51.100.22", "lb3": "198.51.100.23"}
CATALOG = f"""\
bgp: {{asn: 64512}}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {{address: 198.51.100.11, roles: [route-reflector]}}
{''.join(f'  {n}: {{address: {a}}}{chr(10)}' for n, a in LBS.items())}\
clusters: {{edge: {{nodes: [{', '.join(LBS)}]}}}}
services:
  imap: {{mode: tcp, vip: {VIP}, cluster: edge, ports: [{PORT}], check: {{tcp: {{}}}},
         backends: {{mail1: {{address: 203.0.113.25}}}}}}
"""

# The owner's listener: reads every connection; each time a connection has brought another
# `per` bytes it answers one byte (the client's proof that the round arrived whole).
SERVER = textwrap.dedent(f"""
    import selectors, socket, sys
    per = int(sys.argv[1])
    srv = socket.create_server(("{VIP}", {PORT})); srv.setblocking(False)
    sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
    got = {{}}
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is srv:
                c, _ = srv.accept(); sel.register(c, selectors.EVENT_READ); got[c] = 0; continue
            try:
                data = s.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s); s.close(); continue
            before = got[s] // per; got[s] += len(data)
            for _ in range(got[s] // per - before):
                s.sendall(b"k")
""")

# The client: K connections; per line on stdin, `per` bytes on each and the owner's byte back.
CLIENT_PY = textwrap.dedent(f"""
    import socket, sys, time
    k, per = int(sys.argv[1]), int(sys.argv[2])
    conns = [socket.create_connection(("{VIP}", {PORT}), timeout=30) for _ in range(k)]
    print("ready", flush=True)
    block = b"x" * (1 << 20)
    for line in sys.stdin:
        t0 = time.monotonic(); bad = set()
        for i, c in enumerate(conns):
            try:
                left = per
                while left:
                    left -= c.send(block[:min(left, len(block))])
            except OSError:
                bad.add(i)
        for i, c in enumerate(conns):
            try:
                if i not in bad and c.recv(1) != b"k":
                    bad.add(i)
            except OSError:
                bad.add(i)
        print(f"{{time.monotonic() - t0:.3f}} {{len(bad)}}", flush=True)
""")


class Bench:
    """Our namespaces and processes (and nothing else); torn down in :meth:`down`."""

    def __init__(self) -> None:
        self.p = f"aclbsc{secrets.token_hex(2)}"
        self.ns = {h: f"{self.p}-{h}" for h in ("sw", "cl", *LBS)}
        self.dir = Path(tempfile.mkdtemp(prefix="aclbsc-", dir="/tmp"))
        (self.dir / "catalog.yaml").write_text(CATALOG)
        nodes = compile_catalog(self.dir / "catalog.yaml").nodes
        self.files: dict[str, Path] = {}
        for lb in LBS:
            [f] = nftables.render(nodes[lb], {}, "/")
            self.files[lb] = self.dir / f"{lb}.nft"
            self.files[lb].write_text(f.content)
        flood = self.files["lb2"].read_text()
        unicast, n = re.subn(r"dup to \S+ dup to \S+ drop", f"dup to {LBS['lb1']} drop", flood)
        assert n == 1, "lb2's flood rule not found"
        self.files["lb2-unicast"] = self.dir / "lb2-unicast.nft"
        self.files["lb2-unicast"].write_text(unicast)
        self.procs: list[subprocess.Popen[str]] = []
        self.softirq = ksoftirqd()

    def sh(self, host: str, *argv: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.ns[host], *argv], capture_output=True, text=True,
                           timeout=60)
        if r.returncode:
            raise RuntimeError(f"{host}: {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def up(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        self.sh("sw", "ip", "link", "add", "br0", "type", "bridge")
        self.sh("sw", "ip", "link", "set", "br0", "up")
        for host, addr in [("cl", CLIENT), *LBS.items()]:
            self.sh(host, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", self.ns["sw"])
            self.sh("sw", "ip", "link", "set", host, "master", "br0", "up")
            self.sh(host, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            self.sh(host, "ip", "link", "set", "lo", "up")
            self.sh(host, "ip", "link", "set", "eth0", "up")
            if host != "cl":
                self.sh(host, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            if host != "cl":   # ours, for the measurement only: packets to the VIP of 1500 bytes and larger
                self.sh(host, "nft", MEASURE)
        self.sh("cl", "ip", "link", "set", "eth0", "gso_max_segs", "1")
        self.sh("cl", "ip", "route", "add", f"{VIP}/32", "via", LBS["lb1"])
        self.steering(True)

    def spawn(self, host: str, code: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[host], sys.executable, "-c", code, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def steering(self, on: bool, lb2: str = "lb2") -> None:
        for lb in LBS:
            if on:
                self.sh(lb, "nft", "-f", str(self.files[lb2 if lb == "lb2" else lb]))
            else:
                for fam in ("ip", "ip6"):
                    self.sh(lb, "sh", "-c", f"nft list table {fam} anycastlb_steer >/dev/null 2>&1 && "
                            f"nft delete table {fam} anycastlb_steer || true")

    def route(self, lb: str) -> None:
        self.sh("cl", "ip", "route", "replace", f"{VIP}/32", "via", LBS[lb])

    def counters(self, lb: str) -> dict[str, tuple[int, int]]:
        """Steering rule counters of ``lb``'s ip table: {"steered"|"dropped": (packets, bytes)}."""
        out = {"steered": (0, 0), "dropped": (0, 0)}
        r = subprocess.run(["ip", "netns", "exec", self.ns[lb], "nft", "-j", "list", "table", "ip", "anycastlb_steer"],
                           capture_output=True, text=True)
        if r.returncode:
            return out
        for item in json.loads(r.stdout)["nftables"]:
            exprs = (item.get("rule") or {}).get("expr", [])
            cnt = next((e["counter"] for e in exprs if "counter" in e), None)
            if cnt:
                out["steered" if any("dup" in e for e in exprs) else "dropped"] = (cnt["packets"], cnt["bytes"])
        return out

    def sizes(self, lb: str) -> tuple[int, int]:
        """Packets to the VIP that reached ``lb`` with 1500 bytes, and with more (the measure table)."""
        r = json.loads(self.sh(lb, "nft", "-j", "list", "table", "ip", "aclbsc_measure"))
        c = [e["counter"]["packets"] for item in r["nftables"] for e in (item.get("rule") or {}).get("expr", [])
             if "counter" in e]
        return c[0], c[1]

    def tx_packets(self) -> int:
        doc = json.loads(self.sh("cl", "ip", "-j", "-s", "link", "show", "eth0"))
        return int(doc[0]["stats64"]["tx"]["packets"])

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


MEASURE = (f"add table ip aclbsc_measure; add chain ip aclbsc_measure pre {{ type filter hook prerouting "
           f"priority -300; policy accept; }}; add rule ip aclbsc_measure pre ip daddr {VIP} tcp dport {PORT} "
           f"meta length 1500 counter; add rule ip aclbsc_measure pre ip daddr {VIP} tcp dport {PORT} "
           f"meta length > 1500 counter")


def ksoftirqd() -> list[int]:
    """The kernel's softirq threads (network receive work runs there when it is not run inline)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and (p / "comm").exists() and (p / "comm").read_text().startswith("ksoftirqd/")]


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of ``pids`` in clock ticks. The kernel here has no IRQ time accounting, so the
    softirq work a process runs inline (veth delivery, nftables, dup, the peers' receive) is its stime."""
    total = 0
    for pid in pids:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total


CASES = ("off", "on, at the owner", "on, moved: flood", "on, moved: unicast")


def one(b: Bench, client: subprocess.Popen[str], case: str) -> dict[str, Any]:
    """One round of ``case``: kernel CPU per packet, and the steering counters' deltas."""
    b.steering(case != "off", "lb2-unicast" if case.endswith("unicast") else "lb2")
    b.route("lb2" if "moved" in case else "lb1")
    before = {lb: b.counters(lb) for lb in LBS}
    size0 = {lb: b.sizes(lb) for lb in LBS}
    pids = [p.pid for p in b.procs] + b.softirq
    pk0, t0 = b.tx_packets(), cpu_ticks(pids)
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write("go\n")
    client.stdin.flush()
    secs, broken = client.stdout.readline().split()
    ticks, packets = cpu_ticks(pids) - t0, b.tx_packets() - pk0
    sizes = {lb: tuple(x - y for x, y in zip(b.sizes(lb), size0[lb])) for lb in LBS}
    after = {lb: b.counters(lb) for lb in LBS}
    delta = {lb: {k: (after[lb][k][0] - before[lb][k][0], after[lb][k][1] - before[lb][k][1]) for k in after[lb]}
             for lb in LBS}
    cpu = ticks / os.sysconf("SC_CLK_TCK")
    return {"case": case, "seconds": float(secs), "broken": int(broken), "packets": packets, "cpu_s": cpu,
            "ns_per_packet": cpu * 1e9 / max(packets, 1), "counters": delta, "sizes": sizes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--mb", type=int, default=24, help="MB per connection per case and round")
    args = ap.parse_args()
    need_root()
    if not (1 <= args.rounds <= 20 and 1 <= args.conns <= 32 and 1 <= args.mb <= 256):
        sys.exit("bounded: --rounds 1-20, --conns 1-32, --mb 1-256")
    print(machine(), flush=True)
    b = Bench()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(1))
    rows: list[dict[str, Any]] = []
    try:
        b.up()
        per = args.mb << 20
        server = b.spawn("lb1", SERVER, str(per))
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = b.spawn("cl", CLIENT_PY, str(args.conns), str(per))
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        one(b, client, "off")                       # warm-up, not counted
        for r in range(args.rounds):
            order = CASES[r % len(CASES):] + CASES[:r % len(CASES)]
            for case in order:
                rows.append(one(b, client, case))
        b.steering(False)                           # the same move without steering
        b.route("lb2")
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        reset = int(client.stdout.readline().split()[1])
    finally:
        b.down()
    return report(rows, args, reset)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, reset: int) -> int:
    """Medians per case, ratios to off, copies and sizes; 1 if a target is missed."""
    mb = args.conns * args.mb
    med: dict[str, float] = {}
    print(f"\n{args.conns} connections × {args.mb} MB per case ({mb} MB), {args.rounds} rounds; CPU = the client's, "
          f"the owner's listener's and the ksoftirqd threads' (stime + utime)")
    for case in CASES:
        rs = [r for r in rows if r["case"] == case]
        ms = [r["cpu_s"] * 1000 / mb for r in rs]
        med[case] = statistics.median(ms)
        print(f"  {case:<20} {med[case]:6.2f} ms CPU per MB (range {min(ms):.2f}–{max(ms):.2f}), "
              f"{statistics.median(r['ns_per_packet'] for r in rs):6.0f} ns per packet sent, "
              f"{statistics.median(r['packets'] for r in rs):.0f} packets, "
              f"{statistics.median(r['seconds'] for r in rs):.2f} s, broken {sum(r['broken'] for r in rs)}")
    off = med["off"]
    print("ratios (CPU per MB) to off: " + ", ".join(f"{c} {med[c] / off:.2f}×" for c in CASES[1:])
          + f"; flood / unicast {med[CASES[2]] / med[CASES[3]]:.2f}×")
    problems: list[str] = []
    for case in CASES[2:]:
        rs = [r for r in rows if r["case"] == case]
        steered = sum(r["counters"]["lb2"]["steered"][0] for r in rs)
        sent = sum(r["packets"] for r in rs)
        dropped = sum(r["counters"]["lb3"]["dropped"][0] for r in rs)
        full = {lb: sum(r["sizes"][lb][0] for r in rs) for lb in LBS}
        larger = sum(r["sizes"][lb][1] for r in rs for lb in LBS)
        print(f"  {case}: lb2 steered {steered} of {sent} packets sent, {steered * (2 if 'flood' in case else 1)} "
              f"copies on the segment; lb3 dropped {dropped} copies; 1500-byte packets: {full['lb2']} at lb2, "
              f"{full['lb1']} copies at lb1 (owner), {full['lb3']} at lb3; larger than 1500: {larger}")
        if steered < 0.9 * sent:
            problems.append(f"{case}: only {steered} of {sent} packets were steered")
        if full["lb1"] != full["lb2"] or larger or not full["lb2"]:
            problems.append(f"{case}: 1500-byte packets at lb2 {full['lb2']}, copies at lb1 {full['lb1']}, "
                            f"larger {larger}: copies are not the packets as sent")
    print(f"without steering, the same move: lb2 reset {reset} of {args.conns} connections")
    if med[CASES[1]] > 1.10 * off:
        problems.append(f"steering loaded costs the owner's traffic {med[CASES[1]] / off:.2f}× (target ≤ 1.10×)")
    if med[CASES[2]] > 3 * off:
        problems.append(f"moved traffic, flooded, costs {med[CASES[2]] / off:.2f}× unsteered (target ≤ 3×)")
    if any(r["broken"] for r in rows):
        problems.append("connections broke with steering on")
    if problems:
        print("TARGET MISSED: " + "; ".join(problems))
        return 1
    print("targets met: steering loaded ≤ 1.10× on the owner's traffic, moved traffic flooded ≤ 3× unsteered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
