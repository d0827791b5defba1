"""The ``anycastlb`` command: lint, show, diff, schema (and render, check, roster, lab)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from . import __version__
from .compiler import Fleet, compile_catalog
from .errors import CatalogRefused
from .render import RenderError

#: Subcommand registrations contributed by other modules (render/check, lab ...).
_EXTRA: list[str] = ["anycastlb.render_cli", "anycastlb.lab.cli"]


def _compile(path: str, secrets: str | None = None) -> Fleet:
    sec = None
    if secrets:
        from .secrets import load_secrets
        sec = load_secrets(secrets)
    return compile_catalog(path, secrets=sec)


def cmd_lint(args: argparse.Namespace) -> int:
    """Validate a catalog: a one-line summary, or every error at once."""
    fleet = _compile(args.catalog, args.secrets)
    for w in fleet.warnings:
        print(f"warning: {w}", file=sys.stderr)
    s = fleet.summary
    roles = ", ".join(f"{n} {r}" for r, n in s["roles"].items())
    print(f"ok: {args.catalog}: {s['services']} services, {s['vips']} VIPs, {s['nodes']} nodes ({roles}), "
          f"{s['clusters']} clusters, {s['peers']} peers")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one node's compiled model."""
    fleet = _compile(args.catalog)
    if args.node not in fleet.nodes:
        print(f"error: node {args.node!r} is not in {args.catalog} (nodes: {', '.join(fleet.nodes)})",
              file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(fleet.to_json(args.node))
        return 0
    m = fleet.nodes[args.node]
    print(f"node {m['node']} ({m['address']}{', ' + m['address6'] if m['address6'] else ''}) state {m['state']}")
    print(f"  roles: {', '.join(m['roles'])}")
    if m["bgp"]:
        b = m["bgp"]
        print(f"  bgp: {b['role']}, asn {b['asn']}, bfd {b['bfd']['interval_ms']}ms x {b['bfd']['multiplier']}")
        for nb in b["neighbors"]:
            print(f"    neighbor {nb['name']} {nb['address']} ({nb['kind']}, asn {nb['asn']})")
        print(f"    VIPs on lo: {', '.join(v['prefix'] for v in b['vips']) or '-'}")
        print(f"    announces: {', '.join(b['announce']) or 'nothing'}")
    if m["haproxy"]:
        for f in m["haproxy"]["frontends"]:
            extra = " tls" if f["tls"] else ""
            extra += " redirect->https" if f["redirect_https"] else ""
            to = f["backend"]
            if f.get("routes"):   # a shared VIP:port: each rule's host and path, then the default
                names = {a["name"]: ("*" + a["value"] if a.get("match") == "end" else a["value"])
                         for a in f["routes"]["hosts"] + f["routes"]["paths"]}
                to = ", ".join(f"{r['backend']} ({' '.join(names[a] for a in r['acls'])})"
                               for r in f["routes"]["rules"]) + (f", else {f['backend']}" if f["backend"] else
                                                                  ", else 404")
            elif f.get("pool"):   # a pooled frontend: each VIP's backend
                to = ", ".join(f"{p['address']} -> {p['backend']}" for p in f["pool"])
            print(f"  frontend {f['name']} {f['mode']} {', '.join(f['binds'])} :{f['port']}{extra} -> {to}")
        for be in m["haproxy"]["backends"]:
            servers = ", ".join(f"{s['name']}={s['address']}:{s['port']} w{s['weight']}"
                                f"{' backup' if s['backup'] else ''}{'' if s['state'] == 'active' else ' ' + s['state']}"
                                f"{' tracks ' + s['track']['backend'] if s.get('track') else ''}"
                                for s in be["servers"])
            print(f"  backend {be['name']} {be['balance']} check {be['check']['type']}: {servers}")
        for c in m["haproxy"].get("checks", []):   # shared health checks (their servers are tracked)
            print(f"  check {c['name']} {c['check']['type']}: {', '.join(s['name'] for s in c['servers'])} "
                  f"({', '.join(c['backends'])})")
    if m["apache"]:
        for v in m["apache"]["vhosts"]:
            print(f"  apache vhost {v['server_name']}:{v['port']} ({v['service']})")
    if m["monitoring"]:
        print(f"  monitoring: {len(m['monitoring']['hosts'])} hosts, {len(m['monitoring']['checks'])} checks")
    for g in m["steering"]["groups"] if m["steering"] else []:
        peers = ", ".join(f"{p['node']} {p['address']}{' ' + p['address6'] if p['address6'] else ''}"
                          for p in g["peers"])
        print(f"  steering ({g['name']}): tcp {','.join(str(p) for p in g['ports'])} to "
              f"{', '.join(g['vips4'] + g['vips6'])}: flows not ours go to {peers}")
    fw = m["firewall"]
    if fw is None:
        return 0
    print(f"  firewall: default {fw['policy']}, {len(fw['rules'])} accept rules" if fw["managed"]
          else f"  firewall: unmanaged (the site's firewall must open {len(fw['rules'])} rules: anycastlb ports)")
    for r in fw["rules"]:
        ports = ",".join(str(p) for p in r.get("ports") or []) or "-"
        src = ", ".join(r.get("sources") or []) or "any"
        dst = ", ".join(r.get("destinations") or []) or "any"
        print(f"    accept {r.get('protocol')} {ports} from {src} to {dst}  # {r.get('comment', '')}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """The impact of changing catalog OLD into NEW."""
    from .diff import diff_fleets, drains, format_diff, format_markdown
    old, new = _compile(args.old), _compile(args.new)
    report = diff_fleets(old, new)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.format == "markdown":
        sys.stdout.write(format_markdown(report, drains(old, new, report)))
    else:
        sys.stdout.write(format_diff(report))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the catalog's JSON Schema."""
    from .schema import json_schema
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_owners(args: argparse.Namespace) -> int:
    """Who owns what: root and each tenant's files, services, templates, VIPs and host names."""
    fleet = _compile(args.catalog)
    if args.json:
        print(json.dumps(fleet.owners, indent=2, sort_keys=True))
        return 0
    for owner, o in fleet.owners.items():
        head = owner if owner == "(root)" else f"tenant {owner} (declared in {o['declared_in']})"
        print(head)
        for key in ("files", "services", "templates", "vips", "host_names"):
            print(f"  {key.replace('_', ' ')}: {', '.join(o[key]) or '-'}")
        if o.get("lanes"):
            lanes = o["lanes"]
            for key in ("vip_prefixes", "hostnames", "clusters", "nodes", "backend_prefixes", "certificates"):
                if key in lanes:
                    print(f"  may use {key.replace('_', ' ')}: {', '.join(lanes[key]) or '-'}")
    return 0


def cmd_roster(args: argparse.Namespace) -> int:
    """Print a salt-ssh roster for the catalog's nodes."""
    from .roster import roster_yaml
    fleet = _compile(args.catalog)
    unknown = [n for n in args.node if n not in fleet.nodes]
    if unknown:
        print(f"error: not in the catalog: {', '.join(unknown)}", file=sys.stderr)
        return 2
    sys.stdout.write(roster_yaml(fleet, user=args.user, priv=args.priv, port=args.port, nodes=args.node or None))
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    """The port matrix: every flow the fleet's firewalls accept (for the firewalls between segments)."""
    from .ports import markdown, rows, unmanaged
    fleet = _compile(args.catalog)
    unknown = [n for n in args.node if n not in fleet.nodes]
    if unknown:
        print(f"error: not in the catalog: {', '.join(unknown)}", file=sys.stderr)
        return 2
    table = rows(fleet, args.node or None)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    sys.stdout.write(markdown(table))
    for nid in unmanaged(fleet):
        if not args.node or nid in args.node:
            print(f"\nnode {nid}: firewall unmanaged: the site's firewall must open its rows above")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anycastlb", description=__doc__)
    p.add_argument("--version", action="version", version=f"anycastlb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("lint", help="validate a catalog (file or directory)")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("--secrets", help="secrets file: also check that every certificate and password exists")
    s.set_defaults(func=cmd_lint)
    s = sub.add_parser("show", help="one node's compiled model")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("node", help="a node id (a Salt minion id) of the catalog")
    s.add_argument("--json", action="store_true", help="the whole model as JSON")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("diff", help="impact of a catalog change (nodes and services)")
    s.add_argument("old", help="the catalog as deployed (file or directory)")
    s.add_argument("new", help="the changed catalog (file or directory)")
    s.add_argument("--json", action="store_true", help="the report as JSON")
    s.add_argument("--format", choices=("text", "markdown"), default="text",
                   help="markdown: a merge-request comment (what changes, on which nodes, what is drained)")
    s.set_defaults(func=cmd_diff)
    s = sub.add_parser("owners", help="who owns what: root and tenant files, services, VIPs, host names")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("--json", action="store_true", help="as JSON, for review tooling")
    s.set_defaults(func=cmd_owners)
    s = sub.add_parser("schema", help="JSON Schema of the catalog")
    s.set_defaults(func=cmd_schema)
    s = sub.add_parser("roster", help="salt-ssh roster of the catalog's nodes (for bootstrapping)")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("node", nargs="*", help="only these nodes (default: all)")
    s.add_argument("--user", default="root", help="ssh user (default %(default)s)")
    s.add_argument("--priv", help="ssh private key for salt-ssh")
    s.add_argument("--port", type=int, default=22, help="ssh port (default %(default)s)")
    s.set_defaults(func=cmd_roster)
    s = sub.add_parser("ports", help="port matrix: who talks to whom on which port")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("node", nargs="*", help="only flows to these nodes (default: all)")
    s.add_argument("--json", action="store_true", help="the matrix as JSON")
    s.set_defaults(func=cmd_ports)
    for modname in _EXTRA:
        try:
            mod = __import__(modname, fromlist=["register"])
        except ImportError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        reg: Callable[[Any], None] = getattr(mod, "register")
        reg(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user's mistake is a message and exit status 1 (or 2), never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CatalogRefused as exc:
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"refused: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except RenderError as exc:
        print(f"error: cannot render: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (``anycastlb show ... | head``): stop quietly, as cat does
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        except OSError:
            pass
        return 141
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
