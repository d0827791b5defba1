"""Hitless change: every VIP under load while the fleet rolls out a changed catalog.

One campus lab. The load is :mod:`anycastlb.lab.probe` ``--load``: bounded client loops
(a new connection per request, 2 s timeout) cycling through every VIP and port of the
catalog, IPv4 and IPv6, tcp, udp and https, from the lab's client (three loops) and, for
the campus-only intranet, from a campus host (one loop). First a steady minute under the
same load (the baseline: what fails when nothing changes), then the change, pushed the
way an operator does it: ``git push`` of the catalog, the post-receive hook, the reactor,
``anycastlb.orch.deploy`` (each LB node drained, applied, verified, undrained in turn).

The change touches every daemon: a backend weight (HAProxy), a new http service with a
new VIP (HAProxy, BIRD, healthd, nftables, apache2 vhosts on the backends, Icinga2) and
a faster KDC check (healthd on the anycast backends). None of it changes a node's BGP
sessions, so the plan applies every node in place (``drain: auto``).

Then, for comparison, a second change (another weight) deployed with ``drain: always``,
the way every deploy ran before: each LB node and KDC withdrawn and re-announced in turn,
so the routers' ECMP rehashes twice per node.

Only the requests sent between the push and the orchestration's end count as "during the
deploy" (the load loops mark that window themselves, see :func:`anycastlb.lab.probe.load`).
A tcp request counts as served only when the backend's banner comes back.

Target (issue 7): at least 20,000 requests, 0 failed; the exit code is 1 when it is missed.

Run: ``sudo .venv/bin/python benchmarks/hitless.py`` (about 6 minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import lab as campus_lab, machine, need_root  # noqa: E402

from anycastlb.lab import fleet as fl  # noqa: E402
from anycastlb.lab import ops  # noqa: E402
from anycastlb.lab.fleet import PYTHON  # noqa: E402


def targets(lab, fleet, source: str) -> list[dict]:
    """Every VIP and port the catalog lets ``source`` reach."""
    specs = fl.probe_specs(lab, fleet, source, lab.statedir / "pki")
    return [dict(s, timeout=2.0) for s in specs if s["allowed"]]


class Load:
    """One bounded load loop in a lab host; :meth:`mark` delimits the window that is counted."""

    MARKS = ("start", "end")

    def __init__(self, lab, source: str, specs: list[dict], seconds: float, tag: str) -> None:
        self.stop_file = lab.statedir / f"hitless-{tag}.stop"
        self.marks = [lab.statedir / f"hitless-{tag}.{m}" for m in self.MARKS]
        for f in (self.stop_file, *self.marks):
            f.unlink(missing_ok=True)
        spec = {"targets": specs, "interval": 0.001, "duration": seconds, "max_requests": 100000,
                "stop_file": str(self.stop_file), "marks": [str(m) for m in self.marks]}
        self.proc = subprocess.Popen(lab.argv(source, [PYTHON, "-m", "anycastlb.lab.probe", "--load", "-"],
                                              cwd=str(lab.repo)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec))
        self.proc.stdin.close()
        self.proc.stdin = None
        self.t0 = time.monotonic()

    def mark(self, which: str) -> None:
        """The window's ``start`` or ``end`` is now."""
        self.marks[self.MARKS.index(which)].touch()

    def result(self) -> dict:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=120)
        for f in (self.stop_file, *self.marks):
            f.unlink(missing_ok=True)
        return json.loads(out)


def loads(lab, fleet, seconds: float, tag: str) -> list[Load]:
    out = []
    client = targets(lab, fleet, "client")
    for i in range(3):
        rotated = client[i * len(client) // 3:] + client[:i * len(client) // 3]
        out.append(Load(lab, "client", rotated, seconds, f"{tag}-client{i}"))
    campus = [s for s in targets(lab, fleet, "salt") if s["service"] == "intranet"]
    out.append(Load(lab, "salt", campus, seconds, f"{tag}-campus"))
    return out


def mark(group: list[Load], which: str) -> None:
    for ld in group:
        ld.mark(which)


def collect(group: list[Load], t_ref: float, window: bool = True) -> dict:
    """Requests and failures of every loop; with ``window``, only those between the marks
    ``start`` and ``end`` (a loop that missed a mark counts from its first request or to its last)."""
    total = failed = 0
    failures = []
    for ld in group:
        r = ld.result()
        marks = r.get("at_marks") or []
        lo = marks[0] if window and marks else {"requests": 0, "failed": 0, "at_s": 0.0}
        hi = marks[1] if window and len(marks) > 1 else {"requests": r["requests"], "failed": r["failed"],
                                                          "at_s": float("inf")}
        total += hi["requests"] - lo["requests"]
        failed += hi["failed"] - lo["failed"]
        failures += [dict(f, at_s=round(f["at_s"] + ld.t0 - t_ref, 2)) for f in r["failures"]
                     if lo["at_s"] <= f["at_s"] <= hi["at_s"]]
    return {"requests": total, "failed": failed, "failures": sorted(failures, key=lambda f: f["at_s"])}


def edit(checkout: Path) -> None:
    p = checkout / "campus.yaml"
    data = yaml.safe_load(p.read_text())
    data["services"]["intranet"]["backends"]["web1"]["weight"] = 80
    data["services"]["api"] = {"extends": "web", "vip": "192.0.2.12", "cluster": "edge",
                               "backends": ["web1", "web2"], "apache": {"server_name": "api.example.org"}}
    data["services"]["kdc"]["check"] = {"tcp": {"port": 88}, "interval": "1s"}
    p.write_text(yaml.safe_dump(data, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=float, default=60.0, help="seconds of steady state under load")
    a = ap.parse_args()
    need_root()
    from anycastlb.compiler import compile_catalog

    print(machine(), flush=True)
    with campus_lab(tag="hitless") as lab:
        fleet = compile_catalog(lab.catalog)
        fl.wait_converged(lab, fleet, timeout=120)
        n = len(targets(lab, fleet, "client")) + len(targets(lab, fleet, "salt"))
        print(f"load targets: {n} (every VIP and port, v4 and v6)", flush=True)
        t0 = time.monotonic()
        base = loads(lab, fleet, a.baseline, "base")
        time.sleep(a.baseline)
        steady = collect(base, t0, window=False)
        print(f"steady state: {steady['requests']} requests in {a.baseline:.0f} s, {steady['failed']} failed", flush=True)

        change = loads(lab, fleet, 900, "change")
        time.sleep(3)
        t1 = time.monotonic()
        mark(change, "start")
        with ops.OrchestrationWatch(lab) as watch:
            rev = ops.push_catalog(lab, edit, "intranet weight, new service api, kdc checks every second")
            ret = watch.wait(900)
        mark(change, "end")
        deploy = time.monotonic() - t1
        during = collect(change, t1)
        ok = ret.get("success") is True
        new = compile_catalog(ops.catalog_file(lab))
        api = [s for s in fl.probe_specs(lab, new, "client", None) if s["service"] == "api"]
        served = all(r["ok"] for r in fl.run_probes(lab, "client", api))
        print(f"drain auto: {', '.join(ops.orchestration_steps(ret))}", flush=True)

        # the comparison: a weight change, every node drained and undrained in turn
        cat = ops.catalog_file(lab)
        cat.write_text(cat.read_text().replace("weight: 80", "weight: 70", 1))
        always = loads(lab, fleet, 900, "always")
        time.sleep(3)
        t2 = time.monotonic()
        mark(always, "start")
        rc, data, raw = ops.orchestrate(lab, pillar={"anycastlb_deploy": {"drain": "always"}})
        mark(always, "end")
        deploy2 = time.monotonic() - t2
        drained = collect(always, t2)
        ok2 = rc == 0
        names = [n for n in ops.orchestration_steps({"return": data}) if n.startswith(("drain", "undrain"))]
        print(f"drain always: {len(names)} drain/undrain steps", flush=True)
    print(f"\n{machine()}\n")
    print(f"change {rev[:10]}: git push → anycastlb.orch.deploy {'succeeded' if ok else 'FAILED'} in {deploy:.1f} s; "
          f"api served after it: {served}")
    print("| phase | requests | failed |\n| --- | --- | --- |")
    print(f"| steady state, {a.baseline:.0f} s (baseline) | {steady['requests']} | {steady['failed']} |")
    print(f"| rolling deploy, drain auto (nodes applied in place), {deploy:.0f} s | {during['requests']} | "
          f"{during['failed']} |")
    print(f"| rolling deploy, drain always ({'ok' if ok2 else 'FAILED'}), {deploy2:.0f} s | {drained['requests']} | "
          f"{drained['failed']} |")
    for f in during["failures"][:20]:
        print(f"  drain auto: failed at {f['at_s']:+.2f} s from the push: {f['target']}: {f['detail']}")
    for f in drained["failures"][:20]:
        print(f"  drain always: failed at {f['at_s']:+.2f} s from the start: {f['target']}: {f['detail']}")
    total = during["requests"]
    met = ok and served and during["failed"] == 0 and total >= 20000
    print(f"\ntarget (>= 20,000 requests during the deploy, 0 failed): {'met' if met else 'NOT met'} "
          f"({total} requests, {during['failed']} failed)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
