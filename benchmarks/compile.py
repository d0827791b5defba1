"""Compile-time benchmark: a synthetic fleet of 500 nodes with 500, 1,000 and 2,000 services.

Prints, for each size, the whole-fleet compile time (load + validate + every
node's model), the time to hand one minion its slice from a compiled catalog
(what the ext_pillar does per minion), and the time for one slice from a cold
start (load + validate + that one node). Every figure is also printed as a
ratio against a baseline measured in the same process: PyYAML's ``safe_load`` of
the same catalog text with the same C loader (libyaml's ``CSafeLoader``) the
catalog loader uses, so a slower or faster machine moves both alike. Targets
(issue 2): whole fleet under 5 s at 2,000 services, a slice under 50 ms, linear
growth (the whole fleet grows no faster than 1.5 times the services); the exit
code is 1 when one is missed.

Run: ``.venv/bin/python benchmarks/compile.py`` (``--sizes 500,1000`` to choose).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anycastlb.compiler import compile_catalog  # noqa: E402

#: The C loader anycastlb.loader builds on (libyaml; PyYAML's pure-Python SafeLoader is ~8x slower).
BASE_LOADER = yaml.CSafeLoader


def synthetic_catalog(services: int, nodes: int = 500) -> dict:
    """Mixed http/tcp/anycast services, v4+v6 VIPs, three levels of templates."""
    n_lb, n_rr, n_any = 40, 2, 40
    n_web = nodes - n_lb - n_rr - n_any - 2
    node_map: dict[str, dict] = {}
    # Only documentation ranges, even though nothing is ever sent: nodes fill 198.51.100.0/24 and
    # then 203.0.113.0/24 (508 hosts), v4 VIPs come from 192.0.2.0/24 (the first 250 services; the
    # rest are v6-only), v6 everything from 2001:db8::/32.
    v4_hosts = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 254)]
    idx = 0

    def add(name: str, **extra) -> None:
        nonlocal idx
        node_map[name] = {"address": v4_hosts[idx], "address6": f"2001:db8:100::{idx + 1:x}", **extra}
        idx += 1

    add("salt", roles=["salt-master"])
    add("mon1", roles=["monitoring"])
    for i in range(n_rr):
        add(f"rr{i + 1}", roles=["route-reflector"])
    for i in range(n_lb):
        add(f"lb{i + 1}")
    for i in range(n_any):
        add(f"any{i + 1}")
    for i in range(n_web):
        add(f"web{i + 1}")
    clusters = {f"c{c}": {"nodes": [f"lb{i + 1}" for i in range(c * 4, c * 4 + 4)]} for c in range(n_lb // 4)}
    templates = {
        "base": {"check": {"interval": "1s"}, "monitor": {"notify": ["ops"]}},
        "web": {"extends": "base", "mode": "http", "ports": [80], "backend_port": 8080,
                "check": {"http": {"path": "/healthz"}}, "apache": {}},
        "tls-web": {"extends": "web", "ports": [80, 443], "tls": {"certificate": "wild"}, "redirect_http": True},
        "tcp": {"extends": "base", "mode": "tcp", "check": {"tcp": {}}},
        "any": {"extends": "base", "mode": "anycast", "check": {"tcp": {"port": 53}}},
    }
    svcs: dict[str, dict] = {}
    for s in range(services):
        v6 = f"2001:db8:1::{s + 1:x}"
        vips = [f"192.0.2.{s + 1}", v6] if s < 250 else [v6]
        kind = s % 10
        if kind < 5:
            svc = {"extends": "tls-web" if kind % 2 else "web", "vip": vips, "cluster": f"c{s % len(clusters)}",
                   "backends": [f"web{(s * 3 + k) % n_web + 1}" for k in range(3)],
                   "apache": {"server_name": f"s{s}.example.org"}}
        elif kind < 8:
            svc = {"extends": "tcp", "vip": vips[0], "ports": [1000 + kind, 2000 + kind], "cluster": f"c{s % len(clusters)}",
                   "backends": {f"ext{s}a": {"address": f"2001:db8:203::{2 * s + 1:x}"},
                                f"ext{s}b": {"address": f"2001:db8:203::{2 * s + 2:x}", "backup": True}}}
        else:
            svc = {"extends": "any", "vip": vips, "ports": ["53/udp", "53/tcp"],
                   "backends": [f"any{(s + k) % n_any + 1}" for k in range(2)]}
        svcs[f"svc{s}"] = svc
    return {"bgp": {"asn": 64512, "bfd": {"interval": "100ms", "multiplier": 3}},
            "vip_pools": ["192.0.2.0/24", "2001:db8:1::/64"],
            "management": ["198.51.100.0/24", "203.0.113.0/24"],
            "defaults": {"balance": "roundrobin", "check": {"interval": "2s", "rise": 2, "fall": 3}, "allow": ["any"]},
            "nodes": node_map, "peers": {"core1": {"address": "203.0.113.254", "asn": 64500}},
            "clusters": clusters, "templates": templates, "services": svcs}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="500,1000,2000")
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="aclb-bench-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"catalog-{n}.yaml"
            text = yaml.safe_dump(synthetic_catalog(n, args.nodes), sort_keys=False)
            path.write_text(text)
            baseline = best_of(lambda: yaml.load(text, Loader=BASE_LOADER), args.repeat)
            whole = best_of(lambda: [fleet_nodes(compile_catalog(path))], args.repeat)
            lb = "lb1"
            slice_warm = statistics.median(_first_slice(path, node) for node in ("lb1", "web1", "any1", "rr1"))
            cold = best_of(lambda: compile_catalog(path).nodes[lb], args.repeat)
            rows.append((n, baseline, whole, slice_warm, cold))
    print(f"{'services':>8} {'nodes':>5} {BASE_LOADER.__name__:>14} {'whole fleet':>12} {'x base':>7} "
          f"{'slice (warm)':>12} {'slice (cold)':>12} {'x base':>7}")
    for n, base, whole, warm, cold in rows:
        print(f"{n:>8} {args.nodes:>5} {base * 1000:>12.0f}ms {whole * 1000:>10.0f}ms {whole / base:>7.2f} "
              f"{warm * 1000:>10.2f}ms {cold * 1000:>10.0f}ms {cold / base:>7.2f}")
    first = rows[0]
    ok = True
    for n, base, whole, warm, cold in rows[1:]:
        print(f"growth {first[0]} -> {n} services ({n / first[0]:.1f}x): whole fleet {whole / first[2]:.2f}x, "
              f"baseline {base / first[1]:.2f}x")
        ok = ok and whole / first[2] <= 1.5 * n / first[0]
    for n, base, whole, warm, cold in rows:
        ok = ok and warm < 0.050 and (n < 2000 or whole < 5.0)
    print(f"target (whole fleet < 5 s at 2,000 services, slice < 50 ms, linear growth): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def _first_slice(path: Path, node: str) -> float:
    """Time to build one node's model from a validated catalog (the pillar's per-minion work)."""
    fleet = compile_catalog(path)
    return _time(lambda: fleet.slice(node))


def fleet_nodes(fleet) -> int:
    return sum(1 for _ in fleet.nodes.values())


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
