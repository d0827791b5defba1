"""``anycastlb render`` and ``anycastlb check``: every node's files, offline, through the Salt states' code path.

``render`` writes ``DIR/<node>/etc/...`` for every node; ``check`` renders every
node into a scratch directory and runs each daemon's own checker
(:func:`anycastlb.apply.check_node`). Without ``--secrets`` a throwaway
self-signed certificate is generated per certificate name (``openssl``) so the
TLS binds can be checked; the output says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Any

from .apply import check_node, write_file
from .compiler import compile_catalog
from .render import RenderError, confine, daemons
from .secrets import load_secrets, slice_for


def throwaway_certificates(names: list[str]) -> dict[str, dict[str, str]]:
    """A self-signed certificate and key per name (for checking only; never deployed)."""
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="aclb-cert-") as tmp:
        for i, name in enumerate(names):  # the name is catalog text: it names neither a file nor a subject
            key, crt = os.path.join(tmp, f"{i}.key"), os.path.join(tmp, f"{i}.crt")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "2", "-subj", "/CN=anycastlb-check.invalid", "-keyout", key,
                            "-out", crt], check=True, capture_output=True)
            with open(crt, encoding="ascii") as c, open(key, encoding="ascii") as k:
                out[name] = {"cert": c.read(), "key": k.read()}
    return out


def _secrets(args: argparse.Namespace, fleet: Any) -> tuple[dict[str, Any], str]:
    """The secrets store to use, and a note for the output."""
    if args.secrets:
        return load_secrets(args.secrets), f"secrets from {args.secrets}"
    names = sorted({c for m in fleet.nodes.values() for c in m["secrets"]["certificates"]})
    pw = sorted({p for m in fleet.nodes.values() for p in m["secrets"]["bgp_passwords"]})
    store = {"certificates": throwaway_certificates(names), "bgp_passwords": {p: "throwaway" for p in pw}}
    note = "no --secrets: throwaway self-signed certificates"
    if names:
        note += f" for {', '.join(names)}"
    if pw:
        note += f" and placeholder BGP passwords for {', '.join(pw)}"
    return store, note + " (for checking only)"


def cmd_render(args: argparse.Namespace) -> int:
    """Write every node's files under ``--out``."""
    fleet = compile_catalog(args.catalog)
    store, note = _secrets(args, fleet)
    print(f"# {note}")
    failed = 0
    for nid, model in sorted(fleet.nodes.items()):
        secrets = slice_for(model["secrets"], store)
        for spec in daemons():
            if not spec.wanted(model):
                continue
            try:
                node_root = confine(args.out, f"/{nid}")
                files = spec.render(model, secrets, "/")
                targets = [(f, confine(node_root, f.path)) for f in files]  # every path checked before any write
            except RenderError as exc:
                print(f"error: cannot render: {exc.located(nid, spec.name)}", file=sys.stderr)
                failed += 1
                continue
            for f, target in targets:
                write_file(target, f.content, f.mode)
                print(f"{nid}: {spec.name}: {f.path}")
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run every daemon's checker on every node's freshly rendered files."""
    fleet = compile_catalog(args.catalog)
    store, note = _secrets(args, fleet)
    print(f"# {note}")
    failed = 0
    for nid, model in sorted(fleet.nodes.items()):
        results = check_node(model, slice_for(model["secrets"], store))
        if not results:
            print(f"{nid}: (no daemon to check)")
        for name, (ok, output) in results.items():
            print(f"{nid}: {name}: {'ok' if ok else 'REFUSED'}")
            if not ok or args.verbose:
                for line in output.splitlines():
                    print(f"    {line}")
            failed += not ok
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``render`` and ``check`` to the ``anycastlb`` command."""
    s = subparsers.add_parser("render", help="write every node's config files under a directory (offline)")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("--out", required=True, help="output directory: OUT/<node>/etc/...")
    s.add_argument("--secrets", help="secrets file (default: throwaway self-signed certificates)")
    s.set_defaults(func=cmd_render)
    s = subparsers.add_parser("check", help="render every node and run every daemon's own checker")
    s.add_argument("catalog", help="catalog file or directory")
    s.add_argument("--secrets", help="secrets file (default: throwaway self-signed certificates)")
    s.add_argument("-v", "--verbose", action="store_true", help="print the checkers' output for passing checks too")
    s.set_defaults(func=cmd_check)
