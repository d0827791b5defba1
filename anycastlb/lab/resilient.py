"""The lab peer router's resilient mode: BIRD's ECMP routes re-installed through resilient nexthop groups.

BIRD (any version) writes plain multipath routes; when a next hop is added, the kernel's
hash moves flows between the next hops that stay. A Linux *resilient* nexthop group keeps
a table of buckets instead: a next hop that goes away hands only its own buckets to the
others, and a new one gets only buckets that have been idle for ``idle_timer`` seconds, so
an open flow keeps its next hop (docs/routers.md).

In resilient mode the peer's BIRD exports into kernel table :data:`TABLE` instead of
``main``; this syncer (``python -m anycastlb.lab.resilient``, run in the peer's namespace)
reads that table every :data:`EVERY` seconds and mirrors each route into ``main`` as
``ip route replace PREFIX nhid G``: one nexthop object per gateway, one resilient group per
prefix, *replaced in place* (same id) when its set of gateways changes. :func:`plan` is the
pure part: from the routes BIRD installed and what the syncer installed before, the
``ip -batch`` lines that make ``main`` follow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

#: The kernel table the peer's BIRD exports to in resilient mode.
TABLE = 4200
#: How often the syncer reads BIRD's table (seconds).
EVERY = 0.02
#: Resilient group parameters: buckets, and how long a bucket must be idle before it may move
#: to a new next hop (an added node takes over only flows that have ended).
BUCKETS = 64
IDLE_TIMER = 30
NH_BASE, GROUP_BASE = 1000, 5000


@dataclass
class State:
    """What the syncer has installed: gateway → nexthop id, prefix → (group id, gateways)."""

    nexthops: dict[tuple[str, str], int] = field(default_factory=dict)
    groups: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = field(default_factory=dict)
    next_nh: int = NH_BASE
    next_group: int = GROUP_BASE


def wanted(routes: list[dict[str, Any]]) -> dict[str, tuple[tuple[str, str], ...]]:
    """``ip -j route show table T`` → prefix → its sorted (gateway, dev) pairs."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for r in routes:
        hops = r.get("nexthops") or ([r] if r.get("gateway") else [])
        gws = tuple(sorted({(h["gateway"], h["dev"]) for h in hops if h.get("gateway") and h.get("dev")}))
        if gws:
            dst = r["dst"]
            out[dst if "/" in dst else f"{dst}/{128 if ':' in dst else 32}"] = gws
    return out


def plan(want: dict[str, tuple[tuple[str, str], ...]], st: State) -> list[str]:
    """The ``ip -batch`` lines that make ``main`` carry ``want`` through resilient groups; updates ``st``."""
    cmds: list[str] = []
    for gw in sorted({g for gws in want.values() for g in gws} - set(st.nexthops)):
        st.nexthops[gw] = st.next_nh
        st.next_nh += 1
        cmds.append(f"nexthop replace id {st.nexthops[gw]} via {gw[0]} dev {gw[1]}")
    for prefix, gws in sorted(want.items()):
        old = st.groups.get(prefix)
        if old is not None and old[1] == gws:
            continue
        gid = old[0] if old is not None else st.next_group
        if old is None:
            st.next_group += 1
        members = "/".join(str(st.nexthops[g]) for g in gws)
        # the same id, replaced in place: buckets of the next hops that stay do not move
        cmds.append(f"nexthop replace id {gid} group {members} type resilient buckets {BUCKETS} "
                    f"idle_timer {IDLE_TIMER} unbalanced_timer 0")
        if old is None:
            cmds.append(f"route replace {prefix} nhid {gid}")
        st.groups[prefix] = (gid, gws)
    for prefix in sorted(set(st.groups) - set(want)):
        gid, _ = st.groups.pop(prefix)
        cmds.append(f"nexthop del id {gid}")           # takes its route along
    used = {g for _, gws in st.groups.values() for g in gws}
    for gw in sorted(set(st.nexthops) - used):
        cmds.append(f"nexthop del id {st.nexthops.pop(gw)}")
    return cmds


def _routes(family: str, table: int) -> list[dict[str, Any]]:
    r = subprocess.run(["ip", "-j", family, "route", "show", "table", str(table)], capture_output=True, text=True)
    return json.loads(r.stdout or "[]") if r.returncode == 0 else []


def run(table: int = TABLE, every: float = EVERY) -> None:
    """Mirror ``table`` into ``main`` until killed."""
    st = State()
    while True:
        cmds = plan({**wanted(_routes("-4", table)), **wanted(_routes("-6", table))}, st)
        if cmds:
            r = subprocess.run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n", capture_output=True, text=True)
            stamp = f"{time.monotonic():.3f}"
            print(f"{stamp} " + "; ".join(cmds) + (f" -> {r.stderr.strip()}" if r.returncode else ""), flush=True)
        time.sleep(every)


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else TABLE)
