"""What the core asks of BIRD's answers: who carries which prefix, and the BGP sessions.

Parsing is :func:`parse_routes` / :func:`parse_protocols` (re-exported from the BIRD
monitoring plugin, the one parser of each format); the functions here work on their
results.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from ..plugins.check_anycastlb_bird import Protocol, Route, parse_protocols, parse_routes

__all__ = ["Protocol", "Route", "parse_protocols", "parse_routes", "unframe", "first_hops", "carried_via",
           "announcers", "bgp_sessions", "sessions_with", "node_addresses"]


def _addr(token: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(token)))
    except ValueError:
        return ""


def unframe(raw: str) -> str:
    """BIRD's control-socket reply (``1007-...`` codes, `` `` continuations) as ``birdc`` prints it."""
    out = []
    for line in raw.splitlines():
        if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
            out.append(line[5:])
        elif line.startswith(" "):
            out.append(line[1:])
        else:
            out.append(line)
    return "\n".join(out)


def node_addresses(model: Mapping[str, Any]) -> list[str]:
    """The addresses a node's BGP paths carry as next hop (v4 and v6, normalised)."""
    return [_addr(a) for a in (model.get("address"), model.get("address6")) if a]


def first_hops(routes: Iterable[Route], via: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Prefix → the first next hop of each of its paths (sorted); with ``via``, only those
    hops, and only prefixes that keep one."""
    want = {_addr(a) for a in via or ()} - {""}
    out: dict[str, set[str]] = {}
    for r in routes:
        hops = r.next_hops
        if hops and (not want or hops[0] in want):
            out.setdefault(r.net, set()).add(hops[0])
    return {p: sorted(h) for p, h in sorted(out.items())}


def carried_via(routes: Iterable[Route], addresses: Iterable[str]) -> list[str]:
    """The prefixes with at least one path whose first next hop is one of ``addresses``."""
    want = [a for a in addresses if _addr(a)]
    return sorted(first_hops(routes, want)) if want else []


def announcers(routes: Iterable[Route], nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Prefix → the nodes (of ``nodes``: name → model) a BIRD carries a path from."""
    by_addr = {a: n for n, m in nodes.items() for a in node_addresses(m)}
    out: dict[str, set[str]] = {}
    for r in routes:
        hops = r.next_hops
        if hops and hops[0] in by_addr:
            out.setdefault(r.net, set()).add(by_addr[hops[0]])
    return {p: sorted(v) for p, v in out.items()}


def bgp_sessions(protocols: Iterable[Protocol]) -> dict[str, dict[str, str]]:
    """BGP protocol → ``{state, neighbor}``: ``Established``, or what it is instead
    (``start (Active)``, ``down`` ...); ``neighbor`` needs ``show protocols all``."""
    out: dict[str, dict[str, str]] = {}
    for p in protocols:
        if p.proto != "BGP":
            continue
        info = p.info.split()[0] if p.info else ""
        state = info if p.state == "up" and info else p.state + (f" ({info})" if info else "")
        out[p.name] = {"state": state, "neighbor": _addr(p.neighbor or "") or (p.neighbor or "")}
    return out


def sessions_with(sessions: Mapping[str, Mapping[str, str]], addresses: Iterable[str]) -> dict[str, str]:
    """Protocol → state of the sessions (:func:`bgp_sessions`) whose neighbor is one of ``addresses``."""
    want = {_addr(a) for a in addresses} - {""}
    return {n: s["state"] for n, s in sessions.items() if _addr(s.get("neighbor", "")) in want}
