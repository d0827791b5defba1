"""Long-lived connections through fleet changes: flow steering on and off, peer plain and resilient.

One campus lab. In the lab's client, :class:`anycastlb.lab.longlived.Holder` keeps N
connections open (a third each: raw tcp through the tcp service imap, HTTP keep-alive over
TLS to www on IPv4 and on IPv6), each asking and reading an answer every 0.5 s. While they
are held, the fleet goes through these steps (each followed by 3 s of quiet):

- ``salt-run anycastlb.drain`` and ``undrain`` of lb1, then of lb2 (graceful drain with a
  1 s deadline: the open sessions it reports are printed);
- lb3 joins: the catalog's ``state: drain`` becomes ``active``, deployed (``anycastlb.orch.deploy``
  of the LB nodes: lb3 is drained, applied, undrained; the others applied in place);
- lb3 leaves: back to ``state: drain``, deployed the same way;
- BIRD restarted on lb1, then on route reflector rr1 (stop, start: the sessions close at once);
- a rolling deploy of the LB nodes with ``drain: always`` (``anycastlb.orch.deploy``; the
  cluster's ``drain_deadline`` is 5 s here, so its graceful drain without steering is short).

Per step: broken connections (reset, timeout, wrong answer), stalls (an answer later than
2 s) and closes (the server closed cleanly: HAProxy's old worker after a reload,
``hard-stop-after``), counted apart. The same steps run with steering on (the catalog's
default) and off (``steering: false`` on the cluster, applied to the LB nodes), with the peer
router plain (BIRD's ECMP routes) and resilient (resilient nexthop groups,
:mod:`anycastlb.lab.resilient`), in the same lab and run. The steering counters (packets
steered away, peers' copies dropped) are read from the LB nodes' rulesets after each phase.

Target (issue 14): 0 broken and 0 stalls in every phase with steering on; the exit code is 1
when it is missed. The phases with steering off are the baseline.

Run: ``sudo flock /work/wt/.lab.lock .venv/bin/python benchmarks/longlived.py`` (about
10 minutes; ``--modes plain`` or ``--steering on`` for part of it, ``--n`` connections).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import lab as campus_lab, machine, need_root  # noqa: E402

from anycastlb.compiler import compile_catalog  # noqa: E402
from anycastlb.lab import faults, ops  # noqa: E402
from anycastlb.lab import fleet as fl  # noqa: E402
from anycastlb.lab.longlived import Holder, campus_targets, counters, edit_catalog, set_steering, tally  # noqa: E402
from anycastlb.lab.peer import set_mode  # noqa: E402

LB = ("lb1", "lb2", "lb3")   # the campus cluster edge
QUIET = 3.0


def lb3_state(lab, state: str) -> Any:
    def change(d: dict) -> None:
        d["nodes"]["lb3"]["state"] = state
    edit_catalog(lab, change)
    rc, data, raw = ops.orchestrate(lab, pillar={"anycastlb_deploy": {"nodes": list(LB)}})
    if rc != 0:
        raise RuntimeError(f"deploy of lb3 {state}: {raw[-2000:]}")
    fl.wait_converged(lab, compile_catalog(lab.catalog))   # the route reflectors carry lb3 (or not) as the catalog says
    return ", ".join(n for n in ops.orchestration_steps({"return": data}) if "lb3" in n)


def drain(lab, node: str) -> str:
    rc, ret, raw = ops.salt_run(lab, "anycastlb.drain", f"node={node}", "deadline=1")
    if rc != 0 or not (ret or {}).get("result"):
        raise RuntimeError(f"drain {node}: {raw[-1500:]}")
    return f"{ret.get('open_sessions', '?')} sessions open at the 1 s deadline"


def undrain(lab, node: str) -> str:
    rc, ret, raw = ops.salt_run(lab, "anycastlb.undrain", f"node={node}")
    if rc != 0 or not (ret or {}).get("result"):
        raise RuntimeError(f"undrain {node}: {raw[-1500:]}")
    return ""


def bird_restart(lab, node: str) -> str:
    faults.control(lab, node, "stop", "bird")
    faults.control(lab, node, "start", "bird")
    fl.wait_converged(lab, compile_catalog(lab.catalog))
    return ""


def rolling_deploy(lab) -> str:
    rc, data, raw = ops.orchestrate(lab, pillar={"anycastlb_deploy": {"nodes": list(LB), "drain": "always"}})
    if rc != 0:
        raise RuntimeError(f"rolling deploy: {raw[-2000:]}")
    names = [n for n in ops.orchestration_steps({"return": data}) if n.startswith(("drain", "undrain"))]
    if not names:
        raise RuntimeError(f"rolling deploy drained nothing: {raw[-2000:]}")
    return ", ".join(names)


STEPS: list[tuple[str, Callable[[Any], str]]] = [
    ("drain lb1", lambda lab: drain(lab, "lb1")),
    ("undrain lb1", lambda lab: undrain(lab, "lb1")),
    ("drain lb2", lambda lab: drain(lab, "lb2")),
    ("undrain lb2", lambda lab: undrain(lab, "lb2")),
    ("lb3 joins (state active, deployed)", lambda lab: lb3_state(lab, "active")),
    ("lb3 leaves (state drain, deployed)", lambda lab: lb3_state(lab, "drain")),
    ("BIRD restart on lb1", lambda lab: bird_restart(lab, "lb1")),
    ("BIRD restart on rr1", lambda lab: bird_restart(lab, "rr1")),
    ("rolling deploy, drain: always", rolling_deploy),
]


def phase(lab, targets: list[dict], per: int, mode: str, steering: bool) -> dict[str, Any]:
    """Every step with the connections held; per-step tallies."""
    set_steering(lab, "edge", steering)
    before = counters(lab, LB)
    holder = Holder(lab, "client", targets, per_target=per, duration=600).start()
    time.sleep(QUIET)
    marks = []
    try:
        for name, fn in STEPS:
            t0 = time.monotonic()
            note = fn(lab)
            time.sleep(QUIET)
            marks.append((name, t0, time.monotonic(), note))
            print(f"  [{mode}, steering {'on' if steering else 'off'}] {name}: {time.monotonic() - t0:.1f} s"
                  f"{'; ' + note if note else ''}", flush=True)
    finally:
        res = holder.stop()
    after = counters(lab, LB)
    rows = [{"step": name, "seconds": round(b - a, 1), "note": note, **tally(res["events"], a, b)}
            for name, a, b, note in marks]
    whole = tally(res["events"], 0, float("inf"))
    return {"mode": mode, "steering": steering, "connections": per * len(targets), "opened": res["opened"],
            "requests": res["requests"], "steps": rows, "total": whole,
            "counters": {k: after[k] - before[k] for k in after} if steering else None,
            "examples": [e for e in res["events"] if e["kind"] != "closed"][:5]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=99, help="connections held (a third per target)")
    ap.add_argument("--modes", default="plain,resilient", help="peer router modes, in order")
    ap.add_argument("--steering", default="on,off", help="steering on, off, in order")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    need_root()
    modes = args.modes.split(",")
    steerings = [s == "on" for s in args.steering.split(",")]
    print(machine(), flush=True)
    results = []
    with campus_lab(tag="longlived") as lab:
        targets = campus_targets(lab)
        per = max(1, args.n // len(targets))

        def short_deadline(d: dict) -> None:    # the graceful drain of a phase without steering waits 5 s, not 60
            d["clusters"]["edge"]["drain_deadline"] = "5s"
        edit_catalog(lab, short_deadline)
        for mode in modes:
            set_mode(lab, "core1", mode)
            for steering in steerings:
                results.append(phase(lab, targets, per, mode, steering))
    missed = []
    print()
    for r in results:
        s = "on" if r["steering"] else "off"
        print(f"peer {r['mode']}, steering {s}: {r['connections']} connections, {r['requests']} answers, "
              f"{r['opened'] - r['connections']} reopened; broken {r['total']['broken']}, "
              f"stalls {r['total']['stall']}, closed by the server {r['total']['closed']}"
              + (f"; steered {r['counters']['steered']} packets, peers dropped "
                 f"{r['counters']['copies_dropped']} copies" if r["counters"] else ""))
        for row in r["steps"]:
            print(f"  {row['step']:<36} broken {row['broken']:>3}  stalls {row['stall']:>3}  "
                  f"closed {row['closed']:>3}  ({row['seconds']} s{'; ' + row['note'] if row['note'] else ''})")
        for e in r["examples"]:
            print(f"    e.g. {e['target']}: {e['kind']}: {e['detail']}")
        if r["steering"] and (r["total"]["broken"] or r["total"]["stall"]):
            missed.append(f"peer {r['mode']}, steering on: {r['total']['broken']} broken, "
                          f"{r['total']['stall']} stalls")
    for on in (True, False):
        rs = [r for r in results if r["steering"] == on]
        if rs:
            print(f"steering {'on' if on else 'off'}: {sum(r['total']['broken'] for r in rs)} broken, "
                  f"{sum(r['total']['stall'] for r in rs)} stalls over {len(rs)} phase(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if missed:
        print("TARGET MISSED (0 broken, 0 stalls with steering on): " + "; ".join(missed))
        return 1
    print("target met: 0 broken, 0 stalls with steering on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
