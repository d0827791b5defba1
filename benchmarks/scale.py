"""Scale: the campus lab's nodes with a generated catalog of 100, 300 and 1,000 services.

The catalog is the shipped campus example plus generated services on the same nodes
(:func:`scale_catalog`: tls-web, web, tcp and anycast services, about 3.2 VIP:ports per
service). For each size, one lab (built, measured, torn down), and in it:

* ``lab up``: network, Salt, the first ``state.apply`` of every node, the route reflectors
  converged, HAProxy's first verdicts, the first full Icinga2 round (forced) settled;
* the first round: seconds from the forced round to no check PENDING, and how many
  checks were not OK then (target: settled within 60 s, all OK);
* HAProxy on lb1 (the edge cluster has ``frontends: pooled``): ``haproxy -c`` of the live config, and a reload as anycastlb does it
  (``ServiceControl.reload_or_start``: state dump, SIGUSR2, the new worker confirmed),
  timed inside the node; check plus reload is their sum (under systemd the unit's
  ExecReload runs the checker before the signal; the lab's direct control does not)
  (target: 250 ms). The same-run baseline: ``haproxy -c`` of lb1's config for the same services
  with a frontend per service and port, rendered and checked on the host during the lab;
* resident memory of HAProxy (lb1, master and workers), BIRD (lb1 and mon1's listener,
  which holds every path), healthd (lb1) and Icinga2 (mon1, every icinga2 process);
* the pillar slice: :func:`anycastlb.pillar.node_pillar` of lb1 and of mon1 (the two
  largest models), warm (the master compiles once per change), in this process
  (target: 50 ms); and ``salt lb1 pillar.items`` through the master against ``salt lb1
  test.ping`` in the same lab;
* monitoring CPU on mon1: every icinga2 process and its reaped children (the checks: the
  poller, which also runs every network probe, and what stays active), over a window in
  steady state, per hour and per service. The baseline, in the same lab: the configuration
  when the issue was filed = a process per check per interval: one Python plugin per
  HAProxy frontend, announcer and RR check, one ``check_http`` / ``check_tcp`` (the ITL
  commands with the arguments Icinga2 built from the same vars) or ``check_anycastlb_udp``
  per network check. A sample of each kind (http, https, certificate, tcp, udp,
  ``check_anycastlb_haproxy`` with its 10 s shared fetch, ``check_anycastlb_bird``) is run
  in mon1, its CPU (children rusage) scaled to the kind's count, and one poller run is
  taken off (baseline = now − poller + those processes, per hour). Icinga2's own cost of
  starting those processes is not counted, so the baseline is low rather than high
  (target: after at most a tenth of before). Also one poller run's CPU, and its wall time
  (the median of three runs that did not overlap the run Icinga2 schedules every interval,
  and how many did and were left out; target: at most half its 50 s CheckCommand timeout);
* ``state.apply`` of lb1 with nothing to change (target: 10 s);
* a one-service change pushed through git (the post-receive hook, the reactor, the
  rolling deploy), from ``git push`` until the orchestration returns, with the nodes it
  applied and the seconds of each step (target: 30 s).

Prints every size side by side, the growth of each figure against the growth of the
catalog (linear or better: at most 1.25 times the catalog's growth; per-service figures
at most 1.25), each target met or not, and exits 1 when one is not.

Run: ``sudo .venv/bin/python benchmarks/scale.py [--sizes 100,300,1000] [--window 120]``; a size
measured in another run joins the table and the growth with ``--with RESULTS.json`` (its
``--json``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CAMPUS, cpu_seconds, lab as campus_lab, machine, need_root  # noqa: E402

from anycastlb.lab import faults, fleet  # noqa: E402
from anycastlb.lab.salt import salt_cmd  # noqa: E402
from anycastlb.poll import poll_until  # noqa: E402

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


def scale_catalog(n: int, base: Path = CAMPUS, pooled: bool = True) -> dict:
    """The campus catalog with generated services added until it has ``n`` services; with ``pooled``,
    the edge cluster's alike services share HAProxy frontends (``frontends: pooled``).

    A mix per ten services: three ``tls-web`` (80 and 443, two VIPs), three ``web`` (80, two
    VIPs), three tcp (143 and 993, two VIPs, the external mail responders) and one anycast
    service of the KDCs (88 udp and tcp, one VIP): about 3.2 VIP:ports per service. VIPs
    come from 192.0.2.0/24 while it lasts, then from 2001:db8:1::/64.
    """
    data = yaml.safe_load(base.read_text())
    if pooled:
        data["clusters"]["edge"]["frontends"] = "pooled"
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


def per_service_check_ms(n: int, runs: int = 5) -> float:
    """The same-run baseline of ``haproxy -c``: lb1's config for the same ``n`` services with a
    frontend per service and port (``frontends: service``), rendered here and checked by the same
    binary on this host, in the same lab's load (``haproxy -c`` binds nothing); median of ``runs``."""
    from anycastlb.compiler import compile_catalog
    from anycastlb.render import daemon
    from anycastlb.render_cli import throwaway_certificates

    with tempfile.TemporaryDirectory(prefix="aclb-scale-fe-") as tmp:
        cat = Path(tmp, "catalog.yaml")
        cat.write_text(yaml.safe_dump(scale_catalog(n, pooled=False), sort_keys=False))
        lb1 = compile_catalog(cat).nodes["lb1"]
        root = Path(tmp, "root")
        certs = throwaway_certificates(lb1["haproxy"]["certificates"])
        for f in daemon("haproxy").render(lb1, {"certificates": certs, "bgp_passwords": {}}, str(root)):
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run(["haproxy", "-c", "-q", "-f", str(root / "etc/haproxy/haproxy.cfg")], check=True,
                           capture_output=True, timeout=120)
            times.append((time.monotonic() - t0) * 1000)
    return round(statistics.median(times), 1)


def in_node(lab, node: str, code: str, *args: str, timeout: float = 120) -> str:
    r = lab.exec(node, [faults.PYTHON, "-c", code, *args], timeout=timeout, cwd=str(lab.repo))
    if r.returncode != 0:
        raise RuntimeError(f"{node}: {r.stderr[-1000:]}")
    return r.stdout.strip().splitlines()[-1]


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def named(lab, node: str, comm: str) -> list[int]:
    """The PIDs of ``node`` whose command name is ``comm``."""
    out = []
    for pid in faults.node_pids(lab, node):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                out.append(pid)
        except OSError:
            continue
    return sorted(out)


def salt_ms(lab, fun: str) -> float:
    t0 = time.monotonic()
    rc, out, err = salt_cmd(lab, "lb1", fun, "--out=json", "--static", "--timeout=60", timeout=120)
    ms = (time.monotonic() - t0) * 1000
    if rc != 0 or "lb1" not in json.loads(out or "{}"):
        raise RuntimeError(f"salt lb1 {fun}: rc {rc}: {out[-500:]} {err[-500:]}")
    return ms


def slice_ms(catalog: str) -> float:
    """The larger of lb1's and mon1's warm pillar slice (best of 5 each), in this process."""
    from anycastlb.pillar import FleetCache, node_pillar
    cache = FleetCache()
    worst = 0.0
    for node in ("lb1", "mon1"):
        node_pillar(node, catalog, cache=cache)
        best = min(_timed(lambda: node_pillar(node, catalog, cache=cache)) for _ in range(5))
        worst = max(worst, best)
    return round(worst * 1000, 1)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


#: Runs check commands one after another in the monitoring node; prints their CPU (children rusage).
RUN_PLUGINS = """
import json, resource, subprocess, sys
cmds = json.loads(sys.argv[1])
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
for c in cmds:
    subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
"""


#: Where Icinga2's ITL finds check_http and check_tcp (``PluginDir``, Debian's monitoring-plugins).
ITL_PLUGINS = "/usr/lib/nagios/plugins"


def old_probe_command(p: dict, plugins: Path) -> list[str]:
    """The command Icinga2 built for one network check before the poller probed it: the ITL
    ``http`` (check_http) and ``tcp`` (check_tcp) CheckCommands with their defaults, or
    ``anycastlb-udp`` (check_anycastlb_udp), from the same vars."""
    six = ["-6"] if ":" in p["address"] else []
    if p["kind"] == "tcp":   # ITL tcp: tcp_refuse crit, tcp_mismatch warn, tcp_timeout 10
        return [f"{ITL_PLUGINS}/check_tcp", "-H", p["address"], "-p", str(p["port"]), "-r", "crit", "-M", "warn",
                "-t", "10", *six]
    if p["kind"] == "udp":
        cmd = ["/usr/bin/python3", str(plugins / "check_anycastlb_udp.py"), "-H", p["address"], "-p", str(p["port"]),
               "-s", p["send"], "-t", str(p["timeout"])]
        if p.get("dns"):
            cmd += ["--dns", p["dns"], "--dns-type", p["dns_type"]]
        if p.get("krb"):
            cmd += ["--krb", p["krb"]]
        return cmd
    cmd = [f"{ITL_PLUGINS}/check_http", "-H", p["vhost"], "-I", p["address"], "-u", p["uri"], "-p", str(p["port"])]
    if p["tls"]:
        cmd += ["-S"] + (["--sni"] if p["sni"] else [])
    if p["kind"] == "certificate":
        cmd += ["-C", ",".join(map(str, p["days"]))]
    elif p.get("expect"):
        cmd += ["-e", ",".join(map(str, p["expect"]))]
    return cmd + six


def old_plugin_commands(spec: dict, plugins: Path) -> dict[str, list[list[str]]]:
    """The commands Icinga2 ran per interval for the now passive checks, before the poller:
    a Python plugin per HAProxy frontend, announcer and RR check, a check_http, check_tcp or
    check_anycastlb_udp per network check (grouped by what costs alike: http, https, certificate, tcp, udp)."""
    hap = [str(plugins / "check_anycastlb_haproxy.py")]
    bird = [str(plugins / "check_anycastlb_bird.py")]
    b = spec["bird"]
    common = ["--socket", b["socket"]] + [f"--node={x}" for x in b["speakers"]]
    out: dict[str, list[list[str]]] = {"haproxy": [], "announcers": [], "rr-sessions": []}
    for src in spec["haproxy"]:
        for c in src["checks"]:
            out["haproxy"].append(["/usr/bin/python3", *hap, "-H", src["address"], "-p", str(src["port"]),
                                   "--uri", "/metrics", "--frontend", c["frontend"], "--backend", c["backend"],
                                   "--node", src["node"]])
    for c in b["announcers"]:
        out["announcers"].append(["/usr/bin/python3", *bird, "announcers", "--prefix", c["prefix"], *common,
                                  *[f"--expected={e}" for e in c["expected"]]])
    for c in b["rr_sessions"]:
        out["rr-sessions"].append(["/usr/bin/python3", *bird, "rr-sessions", "--rr", c["rr"], *common,
                                   *[f"--neighbor={x}" for x in c["neighbors"]],
                                   *[f"--expected={e}" for e in c["expected"]]])
    for p in spec.get("probes", []):
        group = "https" if p["kind"] == "http" and p["tls"] else p["kind"]
        out.setdefault(group, []).append(old_probe_command(p, plugins))
    return out


def icinga_poller_running() -> bool:
    """Whether a poller run that Icinga2 scheduled is on (it writes to Icinga2's command pipe; the
    benchmark's own runs to ``/dev/null``). One lab at a time runs here (the lab lock)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"check_anycastlb_poll.py") or a.endswith(b"check_anycastlb_poll") for a in argv) \
                and b"/dev/null" not in argv:
            return True
    return False


def poller_wall(run: Callable[[], object], runs: int = 3, tries: int = 8) -> tuple[float, int]:
    """The median wall time of ``runs`` poller runs that did not overlap one Icinga2 scheduled
    (every ``check_s``; two runs at once share the probes' CPU and took twice as long), and how
    many runs were left out for overlapping. Each run starts when no scheduled one is on."""
    walls: list[float] = []
    overlapped = 0
    while len(walls) < runs and tries > 0:
        tries -= 1
        poll_until(lambda: not icinga_poller_running(), timeout=90, interval=0.2)
        seen, stop = threading.Event(), threading.Event()

        def watch() -> None:
            while not stop.wait(0.25):
                if icinga_poller_running():
                    seen.set()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        run()
        wall = time.monotonic() - t0
        stop.set()
        watcher.join()
        if seen.is_set():
            overlapped += 1
        else:
            walls.append(wall)
    if not walls:
        raise RuntimeError(f"every one of {overlapped} poller runs overlapped one Icinga2 scheduled")
    return statistics.median(walls), overlapped


def monitoring_cpu(lab, n: int, window: float, sample: int) -> dict[str, float]:
    """CPU per hour per service on mon1: now (measured), before (the same run's baseline)."""
    from anycastlb.render import icinga2 as ic
    pids = named(lab, "mon1", "icinga2")
    c0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(window)
    c1, t1 = cpu_seconds(named(lab, "mon1", "icinga2")), time.monotonic()
    after_h = (c1 - c0) * 3600 / (t1 - t0)
    spec = json.loads(lab.read_file("mon1", ic.POLL_SPEC))
    plugins = Path(__file__).resolve().parents[1] / "anycastlb" / "plugins"
    old = old_plugin_commands(spec, plugins)
    rng = random.Random(n)
    old_round = 0.0
    out: dict[str, float] = {}
    for group, cmds in old.items():
        if not cmds:
            continue
        picked = rng.sample(cmds, min(sample, len(cmds)))
        cpu = float(in_node(lab, "mon1", RUN_PLUGINS, json.dumps(picked), timeout=900))
        old_round += cpu / len(picked) * len(cmds)
        out[f"before: {group} CPU ms/check"] = round(cpu / len(picked) * 1000, 1)
    poller = ["/usr/bin/python3", str(plugins / "check_anycastlb_poll.py"), "--spec", ic.POLL_SPEC,
              "--command-file", "/dev/null"]
    poll_round = float(in_node(lab, "mon1", RUN_PLUGINS, json.dumps([poller]), timeout=300))
    poll_wall, overlapped = poller_wall(lambda: in_node(lab, "mon1", RUN_PLUGINS, json.dumps([poller]), timeout=300))
    rounds_h = 3600 / ic.INTERVALS["check_s"]
    before_h = after_h + (old_round - poll_round) * rounds_h
    return {"monitoring CPU s/h/service": round(after_h / n, 2),
            "before: CPU s/h/service": round(before_h / n, 2),
            "monitoring after / before": round(after_h / before_h, 3) if before_h else 0.0,
            "poller run s": round(poll_round, 2), "poller run wall s": round(poll_wall, 2),
            "poller runs left out (overlapped Icinga2's)": float(overlapped),
            "passive checks": float(sum(len(v) for v in old.values())),
            "network probes": float(len(spec.get("probes", []))), **out}


def one_service_change(lab) -> dict[str, float | str]:
    """A push that changes one service's balance; seconds until the rolling deploy returned."""
    from anycastlb.lab import ops

    def edit(clone: Path) -> None:
        path = next(p for p in sorted(clone.rglob("*.yaml")) if "gen0003:" in p.read_text())
        data = yaml.safe_load(path.read_text())
        data["services"]["gen0003"]["balance"] = "leastconn"
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    pushed: list[float] = []
    with ops.OrchestrationWatch(lab) as events:
        time.sleep(1)
        # from the push (the operator's clone, edit and commit are not the system's time)
        ops.push_catalog(lab, edit, "gen0003: balance leastconn", on_push=lambda: pushed.append(time.monotonic()))
        ret = events.wait(600)
        secs = time.monotonic() - pushed[0]
    steps = ops.orchestration_steps(ret)
    applied = sorted({s.split()[-1] for s in steps if s.startswith("apply ")})
    print(f"one-service change, {secs:.1f} s from the push; steps (s): "
          + ", ".join(f"{name} {t:.1f}" for name, t in ops.orchestration_timings(ret)), flush=True)
    cfg = lab.read_file("lb1", "/etc/haproxy/haproxy.cfg")
    backend = cfg[cfg.index("\nbackend gen0003-"):][:400]
    if not ret.get("success") or "leastconn" not in backend:
        raise RuntimeError(f"the change did not converge: success {ret.get('success')}, steps {steps}")
    return {"one-service change s": round(secs, 1), "change applied on": ",".join(applied) or "-"}


def measure(n: int, window: float, sample: int) -> dict[str, float | str]:
    work = Path(tempfile.mkdtemp(prefix=f"aclb-scale{n}-", dir="/var/tmp"))
    cat = work / "campus.yaml"
    data = scale_catalog(n)
    cat.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        with campus_lab(cat, tag=f"scale{n}") as lab:
            first = lab.meta.get("first_round") or {}
            out: dict[str, float | str] = {
                "services": float(n), "lab up s": round(lab.up_seconds, 1),
                "first state.apply s": float(lab.meta.get("apply_seconds", 0)),
                "HAProxy first verdicts s": float(first.get("haproxy_s", -1)),
                "first round settled s": float(first.get("round_s", -1)),
                "first round not OK": float(len(first.get("not_ok", {}))),
            }
            if first.get("not_ok"):
                print(f"{n}: not OK in the first round: {sorted(first['not_ok'].items())[:20]}", flush=True)

            def part(name: str, fn) -> None:   # a figure that fails is reported; the others still count
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001
                    out[name] = "failed: " + " ".join(str(exc).split())[-160:]
                    print(f"{n}: {name} failed: {exc}", flush=True)

            part("haproxy -c ms", lambda: out.update({"haproxy -c ms": statistics.median(
                float(in_node(lab, "lb1", TIMED_CHECK)) for _ in range(5))}))
            part("haproxy reload ms", lambda: out.update({"haproxy reload ms": statistics.median(
                float(in_node(lab, "lb1", TIMED_RELOAD)) for _ in range(5))}))
            part("before: haproxy -c ms, a frontend per service", lambda: out.update(
                {"before: haproxy -c ms, a frontend per service": per_service_check_ms(n)}))
            # production (systemd): ExecReload runs the checker, then SIGUSR2; the lab's direct control
            # sends the signal alone, so the two are added
            c, r = out.get("haproxy -c ms"), out.get("haproxy reload ms")
            out["haproxy check+reload ms"] = (round(c + r, 1) if isinstance(c, float) and isinstance(r, float)
                                              else f"failed: -c {c}, reload {r}")
            time.sleep(2)

            def rss() -> None:
                hap = faults.daemon_pid(lab, "lb1", "haproxy")
                out["haproxy RSS MiB"] = rss_mib(faults.descendants(hap)) if hap else 0.0
                bird = faults.daemon_pid(lab, "lb1", "bird")
                out["bird RSS MiB (lb1)"] = rss_mib([bird]) if bird else 0.0
                bird = faults.daemon_pid(lab, "mon1", "bird")
                out["bird RSS MiB (mon1)"] = rss_mib([bird]) if bird else 0.0
                hd = faults.daemon_pid(lab, "lb1", "healthd")
                out["healthd RSS MiB"] = rss_mib([hd]) if hd else 0.0
                out["icinga2 RSS MiB"] = rss_mib(named(lab, "mon1", "icinga2"))
            part("RSS", rss)
            part("pillar slice ms", lambda: out.update({"pillar slice ms": slice_ms(str(lab.catalog))}))

            def salt_rt() -> None:
                out["test.ping ms"] = round(statistics.median(salt_ms(lab, "test.ping") for _ in range(3)))
                out["pillar.items ms"] = round(statistics.median(salt_ms(lab, "pillar.items") for _ in range(3)))
            part("pillar.items ms", salt_rt)
            out["lb1 frontends"] = float(lab.read_file("lb1", "/etc/haproxy/haproxy.cfg").count("\nfrontend "))
            part("monitoring after / before", lambda: out.update(monitoring_cpu(lab, n, window, sample)))

            def noop() -> None:
                t0 = time.monotonic()
                summary = fleet.apply(lab, "lb1")
                out["no-op state.apply lb1 s"] = round(time.monotonic() - t0, 1)
                out["no-op states changed"] = float(summary["lb1"]["changed"])
            part("no-op state.apply lb1 s", noop)
            part("one-service change s", lambda: out.update(one_service_change(lab)))
            print(f"{n} services: {out}", flush=True)
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: figure → (limit, which way), checked at every size; lab up's limit is the issue's for 1,000 services.
TARGETS = {"lab up s": 180.0, "one-service change s": 30.0, "haproxy check+reload ms": 250.0,
           "no-op state.apply lb1 s": 10.0, "pillar slice ms": 50.0, "monitoring after / before": 0.1,
           "first round settled s": 60.0, "first round not OK": 0.0, "no-op states changed": 0.0,
           "poller run wall s": 25.0}   # half the poller's CheckCommand timeout (50 s)
#: figures that cost per service (their growth should be about 1), not per catalog
PER_SERVICE = {"monitoring CPU s/h/service", "before: CPU s/h/service", "monitoring after / before"}
#: figures whose growth is not a cost (inputs, counts, the first round's verdicts)
NOT_COSTS = {"services", "lb1 frontends", "passive checks", "network probes", "first round not OK",
             "no-op states changed", "poller runs left out (overlapped Icinga2's)",
             "change applied on", "HAProxy first verdicts s",
             "before: CPU s/h/service"}  # the same-run baseline, not a cost of ours


def verdicts(res: dict[int, dict[str, float | str]]) -> list[str]:
    """Every target and growth check, each ``met`` or ``NOT met``."""
    sizes = sorted(res)
    lines = []
    for key, limit in TARGETS.items():
        for n in sizes:
            v = res[n].get(key)
            if isinstance(v, float):
                lines.append(f"{key} at {n}: {v:g} (target ≤ {limit:g}): {'met' if v <= limit else 'NOT met'}")
            elif isinstance(v, str) and v.startswith("failed"):
                lines.append(f"{key} at {n}: {v}: NOT met")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        grow = hi / lo
        for key, v in res[hi].items():
            v0 = res[lo].get(key)
            if (key in NOT_COSTS or key.startswith("before:") or not isinstance(v, float)
                    or not isinstance(v0, float) or v0 <= 0):
                continue
            allowed = 1.25 if key in PER_SERVICE else 1.25 * grow
            g = v / v0
            lines.append(f"growth of {key} {lo} -> {hi}: {g:.2f}x (catalog {grow:.1f}x, linear or better: "
                         f"≤ {allowed:.2f}x): {'met' if g <= allowed else 'NOT met'}")
    return lines


#: Certificates for rendering offline (the renderers check that both parts are there, not the PEM).
FAKE_SECRETS = {"certificates": {"campus-wildcard": {"cert": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
                                                     "key": "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"}}}


def offline(n: int) -> dict[str, float | str]:
    """The pure-Python costs at ``n`` services (no lab): libyaml's C loader on the same text
    (the baseline, this process), compile, every node's model, every renderer over every
    node, and the warm pillar slice of lb1 and mon1. Best of 3, in milliseconds."""
    from anycastlb.compiler import compile_catalog
    from anycastlb.render import RenderError, daemons

    work = Path(tempfile.mkdtemp(prefix=f"aclb-scale-offline{n}-"))
    try:
        cat = work / "campus.yaml"
        cat.write_text(yaml.safe_dump(scale_catalog(n), sort_keys=False))
        text = cat.read_text()
        best = lambda fn: round(min(_timed(fn) for _ in range(3)) * 1000, 1)  # noqa: E731
        out: dict[str, float | str] = {"services": float(n),
                                       "baseline: CSafeLoader ms": best(lambda: yaml.load(text, yaml.CSafeLoader))}
        out["compile ms"] = best(lambda: compile_catalog(cat))
        fleets = [compile_catalog(cat) for _ in range(3)]   # node models are built on first use
        out["every node model ms"] = round(min(_timed(lambda: [f.nodes[k] for k in f.nodes]) for f in fleets) * 1000, 1)
        models = {k: fleets[0].nodes[k] for k in fleets[0].nodes}
        for spec in daemons():
            name = spec.name
            mine = [m for m in models.values() if spec.wanted(m)]

            def render_all() -> None:
                for m in mine:
                    try:
                        spec.render(m, FAKE_SECRETS, "/")
                    except RenderError:
                        pass
            out[f"render {name} ms"] = best(render_all)
        out["pillar slice ms"] = slice_ms(str(cat))
        out["compile / baseline"] = round(out["compile ms"] / out["baseline: CSafeLoader ms"], 2)
        print(f"{n} services offline: {out}", flush=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--window", type=float, default=120.0, help="seconds of steady-state monitoring CPU")
    ap.add_argument("--sample", type=int, default=60, help="old plugins run per check type for the baseline")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--offline", action="store_true",
                    help="only the pure-Python costs (compile, models, renderers, pillar slice): no lab, no root")
    ap.add_argument("--with", dest="earlier", action="append", default=[],
                    help="figures of other sizes from an earlier run's --json, for the table and the growth")
    a = ap.parse_args()
    if not a.offline:
        need_root()
    print(machine(), flush=True)
    res: dict[int, dict[str, float | str]] = {}
    for f in a.earlier:
        res.update({int(k): v for k, v in json.loads(Path(f).read_text()).items()})
    failed = []
    for n in (int(x) for x in a.sizes.split(",")):
        try:
            res[n] = offline(n) if a.offline else measure(n, a.window, a.sample)
        except Exception as exc:  # noqa: BLE001 (a size that fails is reported; the others still count)
            print(f"{n} services: FAILED: {exc}", flush=True)
            failed.append(n)
        if a.json:   # after each size: a long run that stops later keeps what it measured
            Path(a.json).write_text(json.dumps({str(k): v for k, v in sorted(res.items())}, indent=1))
    if not res:
        return 1
    sizes = sorted(res)
    print(f"\n{machine()}\n")
    keys = list(res[sizes[0]])
    print("| figure | " + " | ".join(f"{n} services" for n in sizes) + " | growth |")
    print("| --- |" + " --- |" * (len(sizes) + 1))
    for k in keys:
        vals = [res[n].get(k) for n in sizes]
        growth = (f"{vals[-1] / vals[0]:.1f}x" if isinstance(vals[0], float) and isinstance(vals[-1], float)
                  and vals[0] else "-")
        print(f"| {k} | " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals)
              + f" | {growth} |")
    lines = verdicts(res)
    print("\n" + "\n".join(lines))
    missed = [x for x in lines if x.endswith("NOT met")]
    print(f"\n{len(lines) - len(missed)} of {len(lines)} targets met" + (f"; NOT met: {len(missed)}" if missed else ""))
    if failed:
        print(f"NOT measured (failed): {', '.join(map(str, failed))} services")
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
