"""Scale: the campus lab's nodes with a generated catalog of 30, then 300 services.

The catalog is the shipped campus example plus generated services on the same nodes
(:func:`scale_catalog`): two thirds http services of the ``web`` template on web1 and web2
(each its own VIP, apache vhost and Icinga2 checks), one third tcp services to the
external mail responders. VIPs come from 192.0.2.0/24 while it lasts, then from
2001:db8:1::/64. For each size, one lab (built, measured, torn down):

* ``lab up``: network, Salt, the first ``state.apply`` of every node, the route
  reflectors converged, every Icinga2 check run once;
* HAProxy on lb1: ``haproxy -c`` of the live config, and a reload as anycastlb does it
  (``ServiceControl.reload_or_start``: checker, state dump, SIGUSR2, the new worker
  confirmed), timed inside the node; resident memory of the HAProxy processes, BIRD and
  healthd;
* pillar per minion: ``salt lb1 pillar.items`` through the master, against
  ``salt lb1 test.ping`` in the same lab (the round trip without pillar) as baseline.

Prints both sizes side by side and the growth (300 / 30) of each figure.

Run: ``sudo .venv/bin/python benchmarks/scale.py [--sizes 30,300]`` (about 15 minutes).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CAMPUS, lab as campus_lab, machine, need_root  # noqa: E402

from anycastlb.lab import faults  # noqa: E402
from anycastlb.lab.salt import salt_cmd  # noqa: E402

TIMED_RELOAD = """
import time, anycastlb.render.haproxy
from anycastlb.service import ServiceControl
c = ServiceControl()
t0 = time.monotonic()
c.reload_or_start("haproxy")
print(round((time.monotonic() - t0) * 1000, 1))
"""
TIMED_CHECK = """
import subprocess, time
t0 = time.monotonic()
r = subprocess.run(["haproxy", "-c", "-q", "-f", "/etc/haproxy/haproxy.cfg"])
assert r.returncode == 0
print(round((time.monotonic() - t0) * 1000, 1))
"""


def scale_catalog(n: int, base: Path = CAMPUS) -> dict:
    """The campus catalog with generated services added until it has ``n`` services.

    A mix per ten services: three ``tls-web`` (80 and 443, two VIPs), three ``web`` (80, two
    VIPs), three tcp (143 and 993, two VIPs, the external mail responders) and one anycast
    service of the KDCs (88 udp and tcp, one VIP): about 3.2 VIP:ports per service. VIPs
    come from 192.0.2.0/24 while it lasts, then from 2001:db8:1::/64.
    """
    data = yaml.safe_load(base.read_text())
    used = {str(ipaddress.ip_address(v)) for s in data["services"].values()
            for v in (s["vip"] if isinstance(s["vip"], list) else [s["vip"]])}
    v4 = (str(a) for a in ipaddress.ip_network("192.0.2.0/24").hosts() if int(a.packed[-1]) >= 30
          and str(a) not in used)
    k = j = 0

    def vip() -> str:
        nonlocal j
        j += 1
        return next(v4, None) or f"2001:db8:1::{0x1000 + j:x}"
    while len(data["services"]) < n:
        k += 1
        name, kind = f"gen{k:04d}", k % 10
        if kind < 6:
            data["services"][name] = {"extends": "tls-web" if kind < 3 else "web", "vip": [vip(), vip()],
                                      "cluster": "edge", "backends": ["web1", "web2"],
                                      "apache": {"server_name": f"{name}.example.org"}}
        elif kind < 9:
            data["services"][name] = {"mode": "tcp", "vip": [vip(), vip()], "cluster": "edge", "ports": [143, 993],
                                      "check": {"tcp": {}},
                                      "backends": {"mail1": {"address": "203.0.113.25"},
                                                   "mail2": {"address": "203.0.113.26", "backup": True}}}
        else:
            data["services"][name] = {"mode": "anycast", "vip": vip(), "ports": ["88/udp", "88/tcp"],
                                      "check": {"tcp": {"port": 88}}, "backends": ["kdc1", "kdc2"]}
    return data


def in_node(lab, node: str, code: str) -> float:
    r = lab.exec(node, [faults.PYTHON, "-c", code], timeout=120, cwd=str(lab.repo))
    if r.returncode != 0:
        raise RuntimeError(f"{node}: {r.stderr[-1000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def salt_ms(lab, fun: str) -> float:
    t0 = time.monotonic()
    rc, out, err = salt_cmd(lab, "lb1", fun, "--out=json", "--static", "--timeout=60", timeout=120)
    ms = (time.monotonic() - t0) * 1000
    if rc != 0 or "lb1" not in json.loads(out or "{}"):
        raise RuntimeError(f"salt lb1 {fun}: rc {rc}: {out[-500:]} {err[-500:]}")
    return ms


def measure(n: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"aclb-scale{n}-", dir="/var/tmp"))
    cat = work / "campus.yaml"
    cat.write_text(yaml.safe_dump(scale_catalog(n), sort_keys=False))
    try:
        with campus_lab(cat, tag=f"scale{n}") as lab:
            out = {"services": float(n), "lab up s": round(lab.up_seconds, 1),
                   "first state.apply s": float(lab.meta.get("apply_seconds", 0))}
            out["haproxy -c ms"] = statistics.median(in_node(lab, "lb1", TIMED_CHECK) for _ in range(5))
            out["haproxy reload ms"] = statistics.median(in_node(lab, "lb1", TIMED_RELOAD) for _ in range(5))
            time.sleep(2)
            hap = faults.daemon_pid(lab, "lb1", "haproxy")
            out["haproxy RSS MiB"] = round(rss_mib(faults.descendants(hap)) if hap else 0, 1)
            bird = faults.daemon_pid(lab, "lb1", "bird")
            out["bird RSS MiB"] = round(rss_mib([bird]) if bird else 0, 1)
            hd = faults.daemon_pid(lab, "lb1", "healthd")
            out["healthd RSS MiB"] = round(rss_mib([hd]) if hd else 0, 1)
            out["test.ping ms"] = statistics.median(salt_ms(lab, "test.ping") for _ in range(5))
            out["pillar.items ms"] = statistics.median(salt_ms(lab, "pillar.items") for _ in range(5))
            out["pillar / ping"] = round(out["pillar.items ms"] / out["test.ping ms"], 2)
            lines = lab.read_file("lb1", "/etc/haproxy/haproxy.cfg").count("\nfrontend ")
            out["lb1 frontends"] = float(lines)
            print(f"{n} services: {out}", flush=True)
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="30,300")
    a = ap.parse_args()
    need_root()
    print(machine(), flush=True)
    sizes = [int(x) for x in a.sizes.split(",")]
    res = {n: measure(n) for n in sizes}
    print(f"\n{machine()}\n")
    keys = list(res[sizes[0]])
    print("| figure | " + " | ".join(f"{n} services" for n in sizes) + " | growth |")
    print("| --- |" + " --- |" * (len(sizes) + 1))
    for k in keys:
        vals = [res[n][k] for n in sizes]
        growth = f"{vals[-1] / vals[0]:.1f}x" if vals[0] else "-"
        print(f"| {k} | " + " | ".join(f"{v:g}" for v in vals) + f" | {growth} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
