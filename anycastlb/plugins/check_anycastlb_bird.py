#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""Who announces our VIPs, read from the BIRD "listener" on the monitoring node.

The listener receives every path of every VIP from the route reflectors (add-paths),
so ``birdc show route <prefix> all`` lists one route per announcing node and route
reflector; a path's announcer is its ``BGP.originator_id`` (the node's router id)
or, failing that, its BGP next hop.

``announcers``: per VIP prefix, CRITICAL when fewer nodes announce it than expected,
WARNING when more (or other) nodes do. ``rr-sessions``: per route reflector, CRITICAL
when the listener's session(s) to it are not Established, WARNING when it hands on
paths from fewer speakers than expected.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import subprocess
import sys
from dataclasses import dataclass, field

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

_ROUTE = re.compile(r"^(?P<net>\S+)?\s+(?P<kind>\w+)\s+\[(?P<proto>\S+)\s[^\]]*?(?:\sfrom\s(?P<src>\S+))?\]")
_ATTR = re.compile(r"^\s+(?P<key>[\w.]+):\s*(?P<value>.*)$")


@dataclass
class Route:
    """One path of a prefix as BIRD shows it."""

    net: str
    proto: str
    source: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    kind: str = ""              # unicast, unreachable, blackhole ...
    best: bool = False          # BIRD's ``*``: the path it selected
    via: str | None = None      # the ``via`` gateway line (non-BGP routes)

    @property
    def next_hops(self) -> list[str]:
        """The path's next hops, normalised: ``BGP.next_hop`` (the global address first, a
        link-local one after it for IPv6), else the ``via`` gateway."""
        text = self.attrs.get("BGP.next_hop") or self.via or ""
        return [a for a in (_addr(t) for t in text.split()) if a]

    @property
    def announcer(self) -> str | None:
        """The announcing router: originator id, else the first next hop."""
        if "BGP.originator_id" in self.attrs:
            return self.attrs["BGP.originator_id"].split()[0]
        if "BGP.next_hop" in self.attrs:
            return self.attrs["BGP.next_hop"].split()[0]
        return None


@dataclass
class Protocol:
    """One BIRD protocol: name, state and (for BGP) its neighbour address."""

    name: str
    proto: str
    state: str
    info: str
    neighbor: str | None = None


def parse_routes(text: str) -> list[Route]:
    """Routes of ``birdc show route [...] all`` output (every path, not only the best).

    The one parser of this format: the health agent's helpers, the orchestration, the
    runner and the lab use it too (through :mod:`anycastlb.birdstate`).
    """
    routes: list[Route] = []
    net = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Table ", "Network not found")):
            continue
        m = _ROUTE.match(line)
        if m and not line.startswith("\t"):
            net = m.group("net") or net
            best = line.split("]", 1)[1].lstrip().startswith("*")
            routes.append(Route(net=net, proto=m.group("proto"), source=m.group("src"), kind=m.group("kind"),
                                best=best))
            continue
        if routes and line.strip().startswith("via "):
            routes[-1].via = line.split()[1]
            continue
        a = _ATTR.match(line)
        if a and routes:
            routes[-1].attrs[a.group("key")] = a.group("value").strip()
    return routes


def parse_protocols(text: str) -> list[Protocol]:
    """Protocols of ``birdc show protocols all`` (or plain ``show protocols``); ``info`` is
    the BGP state (``Established``, ``Active`` ...) for BGP protocols with ``all``. The one
    parser of this format (see :func:`parse_routes`)."""
    protos: list[Protocol] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")):
            continue
        if not line[0].isspace():
            cols = line.split(None, 5)
            if len(cols) >= 5:
                protos.append(Protocol(cols[0], cols[1], cols[3], cols[5].strip() if len(cols) > 5 else ""))
            continue
        key, _, value = line.strip().partition(":")
        if protos and key == "Neighbor address":
            protos[-1].neighbor = value.strip()
        if protos and key == "BGP state":
            protos[-1].info = value.strip()
    return protos


def _addr(token: str) -> str:
    """``token`` as a normalised IP address, or "" when it is not one."""
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        return ""


def _canon(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


def node_map(pairs: list[str]) -> dict[str, str]:
    """``["lb1=198.51.100.21,2001:db8:100::21", ...]`` → address → node name."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, _, addrs = pair.partition("=")
        for addr in filter(None, addrs.split(",")):
            out[_canon(addr)] = name
    return out


def announcers(routes: list[Route], nodes: dict[str, str]) -> set[str]:
    """Distinct announcing nodes (a name when known, else the address)."""
    out = set()
    for r in routes:
        who = r.announcer
        if who:
            out.add(nodes.get(_canon(who), who))
    return out


def evaluate_announcers(prefix: str, routes: list[Route], expected: list[str],
                        nodes: dict[str, str]) -> tuple[int, str]:
    """State and output line for one VIP prefix."""
    want = ipaddress.ip_network(prefix, strict=False)
    mine = [r for r in routes if _same_net(r.net, want)]
    seen = announcers(mine, nodes)
    exp = set(expected)
    missing, extra = sorted(exp - seen), sorted(seen - exp)
    text = (f"{want} announced by {len(seen)} node(s): {', '.join(sorted(seen)) or 'none'}"
            f" (expected {len(exp)}: {', '.join(sorted(exp)) or 'none'})")
    if missing:
        text += f"; missing: {', '.join(missing)}"
    if extra:
        text += f"; unexpected: {', '.join(extra)}"
    perf = f"announcers={len(seen)};;{len(exp)}:;0 paths={len(mine)};;;0"
    if len(seen) < len(exp):
        state = CRITICAL
    elif missing or extra:
        state = WARNING
    else:
        state = OK
    return state, f"{LABELS[state]}: {text} | {perf}"


def evaluate_rr(rr: str, protocols: list[Protocol], routes: list[Route], neighbors: list[str],
                expected: list[str], nodes: dict[str, str]) -> tuple[int, str]:
    """State and output line for one route reflector as the listener sees it."""
    wanted = {_canon(n) for n in neighbors}
    sessions = [p for p in protocols if p.neighbor and _canon(p.neighbor) in wanted]
    names = {p.name for p in sessions}
    down = [p for p in sessions if not (p.state == "up" and p.info.startswith("Established"))]
    missing_nb = sorted(wanted - {_canon(p.neighbor or "") for p in sessions})
    seen = announcers([r for r in routes if r.proto in names], nodes)
    exp = set(expected)
    lacking = sorted(exp - seen)
    up = len(sessions) - len(down)
    text = (f"{rr}: {up}/{len(wanted)} session(s) Established; hands on paths of {len(seen & exp)}/{len(exp)}"
            f" expected speaker(s)")
    if down:
        text += "; not established: " + ", ".join(f"{p.name} ({p.info or p.state})" for p in down)
    if missing_nb:
        text += "; no protocol for neighbor " + ", ".join(missing_nb)
    if lacking:
        text += "; no paths from " + ", ".join(lacking)
    perf = f"sessions={up};;{len(wanted)}:;0 speakers={len(seen & exp)};{len(exp)}:;;0"
    if down or missing_nb:
        state = CRITICAL
    elif lacking:
        state = WARNING
    else:
        state = OK
    return state, f"{LABELS[state]}: {text} | {perf}"


def _same_net(text: str, want: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_network(text.split("-")[0], strict=False) == want
    except ValueError:
        return False


def birdc(birdc_bin: str, socket: str, command: str, timeout: float) -> str:
    """Run one read-only birdc command; raise RuntimeError with birdc's message on failure."""
    proc = subprocess.run([birdc_bin, "-r", "-s", socket, *command.split()], capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Unable to connect" in out:
        raise RuntimeError(out.strip() or f"{birdc_bin} exited {proc.returncode}")
    return proc.stdout


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", default="/run/bird/bird.ctl", help="BIRD control socket of the listener")
    p.add_argument("--birdc", default="birdc")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--node", action="append", default=[], metavar="NAME=ADDR[,ADDR6]",
                   help="a BGP speaker: its name and addresses (router id first)")
    p.add_argument("--expected", action="append", default=[], metavar="NAME")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="check_anycastlb_bird", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="check", required=True)
    a = sub.add_parser("announcers", help="nodes announcing one VIP prefix")
    a.add_argument("--prefix", required=True)
    _common(a)
    r = sub.add_parser("rr-sessions", help="one route reflector's sessions and paths")
    r.add_argument("--rr", required=True, help="the route reflector's name")
    r.add_argument("--neighbor", action="append", required=True, help="its address(es) as the listener's neighbor")
    _common(r)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a check; print one plugin line; return the plugin exit code."""
    args = build_parser().parse_args(argv)
    nodes = node_map(args.node)
    try:
        if args.check == "announcers":
            routes = parse_routes(birdc(args.birdc, args.socket, f"show route {args.prefix} all", args.timeout))
            state, line = evaluate_announcers(args.prefix, routes, args.expected, nodes)
        else:
            protocols = parse_protocols(birdc(args.birdc, args.socket, "show protocols all", args.timeout))
            routes = parse_routes(birdc(args.birdc, args.socket, "show route all", args.timeout))
            state, line = evaluate_rr(args.rr, protocols, routes, args.neighbor, args.expected, nodes)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        state, line = UNKNOWN, f"UNKNOWN: cannot read BIRD at {args.socket}: {exc}"
    print(line)
    return state


def announcers_main() -> None:
    """Console entry point: ``check_anycastlb_announcers ARGS`` = ``check_anycastlb_bird announcers ARGS``."""
    sys.exit(main(["announcers", *sys.argv[1:]]))


def rr_sessions_main() -> None:
    """Console entry point: ``check_anycastlb_rr_sessions ARGS`` = ``check_anycastlb_bird rr-sessions ARGS``."""
    sys.exit(main(["rr-sessions", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
