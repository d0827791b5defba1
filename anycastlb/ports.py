"""Who talks to whom on which port: the compiled firewall rules as a port matrix.

``anycastlb ports CATALOG`` prints, for the firewalls between segments, every flow
the fleet's own nftables rules accept: to which nodes, which protocol and ports,
from whom (node ids, peers, ``management``, prefixes or ``any``), on which of the
node's addresses, and why. It reads the same compiled model the renderer uses, so
the table cannot drift from the rules (docs/firewall.md holds the campus table; a
test keeps it equal to this output).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from .compiler import Fleet


def _names(fleet: Fleet) -> dict[str, str]:
    """Address or prefix → a readable name (node id, ``peer X``, ``management``)."""
    names: dict[str, str] = {}
    for nid in fleet.nodes:
        m = fleet.nodes[nid]
        for a in (m["address"], m["address6"]):
            if a:
                names[a] = nid
        bgp = m["bgp"]
        for nb in bgp["neighbors"] if bgp else []:
            if nb["kind"] == "peer":
                names.setdefault(nb["address"], f"peer {nb['name']}")
        for p in m["management"]:
            names.setdefault(p, "management")
    return names


def _purpose(comment: str) -> str:
    m = re.fullmatch(r"(bgp|bfd) from (\S+) \S+", comment)
    return f"{m.group(1).upper()} ({m.group(2)})" if m else comment


def _on(rule: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    own = {model["address"], model["address6"]}
    if not rule["destinations"]:
        return "any"
    return "node" if set(rule["destinations"]) <= own else "VIPs"


def _join(items: Iterable[str]) -> str:
    return ", ".join(sorted(set(items), key=lambda x: (x == "any", x)))


def rows(fleet: Fleet, nodes: Iterable[str] | None = None) -> list[dict[str, str]]:
    """The matrix: one row per flow, nodes with identical flows merged."""
    names = _names(fleet)
    flows: dict[tuple[str, str, str, str, str], set[str]] = {}
    for nid in (nodes if nodes is not None else fleet.nodes):
        m = fleet.nodes[nid]
        for r in (m["firewall"] or {"rules": []})["rules"]:
            ports = ", ".join(str(p) for p in r["ports"]) or "all"
            key = (nid, f"{r['protocol']} {ports}", _on(r, m), _purpose(r["comment"]))
            src = {names.get(s, s) for s in r["sources"]} or {"any"}
            flows.setdefault((*key, ""), set()).update(src)  # type: ignore[arg-type]
    merged: dict[tuple[str, str, str, str], set[str]] = {}
    for (nid, port, on, why, _), src in flows.items():
        merged.setdefault((port, _join(src), on, why), set()).add(nid)
    out = [{"to": _join(to), "port": port, "from": frm, "on": on, "why": why}
           for (port, frm, on, why), to in merged.items()]
    return sorted(out, key=lambda r: (r["why"], r["to"], r["port"], r["from"]))


def markdown(table: list[dict[str, str]]) -> str:
    """The matrix as a Markdown table."""
    lines = ["| to | protocol, ports | from | on | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['to']} | {r['port']} | {r['from']} | {r['on']} | {r['why']} |" for r in table]
    return "\n".join(lines) + "\n"


def unmanaged(fleet: Fleet) -> list[str]:
    """Nodes whose firewall the site manages (their rows are what the site must open)."""
    return [nid for nid in fleet.nodes if not (fleet.nodes[nid]["firewall"] or {"managed": True})["managed"]]
