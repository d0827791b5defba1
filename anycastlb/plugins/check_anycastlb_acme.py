#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""ACME certificates of the fleet, seen from the monitoring node.

``serial``: every LB node of a service's cluster must serve the same certificate. HAProxy
binds the service's VIPs, and from the monitoring node a VIP reaches one node only, so
each LB node also serves its ACME certificates on its own address (the probe port,
``frontend acme-probe``, open to the monitoring nodes only). The check connects to every
node with the service's name as SNI, reads the leaf certificate HAProxy actually serves
(the one in its memory, after any hot-load) and compares the serials: OK when all agree,
WARNING when they differ or a node does not answer, CRITICAL when none answers.

``renewal``: the issuer's last renewal pass for a certificate, as the renewal runner
reported it to this node (:func:`write_report`, a JSON file without secrets): WARNING when
it failed (the old certificate stays; the output says why), when no pass has reported the
certificate yet, or when the last report is older than ``--max-age`` (the schedule stopped).

Standard library only: the certificate's DER is read by the few lines of ASN.1 below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
#: Where the renewal runner leaves its report on a monitoring node (kept with the logs: persistent, and
#: private to each node in the lab).
DEFAULT_REPORT = "/var/log/anycastlb/acme-renewal.json"


# ------------------------------------------------------------------ DER, just enough
def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(der):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos:pos + n], "big")
        pos += n
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def der_serial(der: bytes) -> str:
    """The serial number of a DER certificate, upper-case hex as ``openssl x509 -serial`` prints it."""
    tag, start, _ = _tlv(der, 0)                  # Certificate ::= SEQUENCE
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, start, _ = _tlv(der, start)              # tbsCertificate ::= SEQUENCE
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, vstart, vend = _tlv(der, start)
    if tag == 0xA0:                               # [0] version, optional
        tag, vstart, vend = _tlv(der, vend)
    if tag != 0x02:                               # serialNumber ::= INTEGER
        raise ValueError("no serial number")
    value = der[vstart:vend].lstrip(b"\x00") or b"\x00"
    return value.hex().upper()


# ------------------------------------------------------------------ serial
@dataclass
class Served:
    """What one node served (or why it did not)."""

    node: str
    serial: str | None = None
    error: str | None = None


def fetch_serial(node: str, address: str, port: int, name: str, timeout: float) -> Served:
    """The serial of the leaf certificate ``address:port`` serves for SNI ``name``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE              # the serial is compared, not trusted
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return Served(node, error=f"{type(exc).__name__}: {exc}"[:120])
    if not der:
        return Served(node, error="no certificate")
    try:
        return Served(node, serial=der_serial(der))
    except ValueError as exc:
        return Served(node, error=str(exc))


def serial_verdict(name: str, served: list[Served]) -> tuple[int, str]:
    """OK when every node serves one serial; WARNING when they differ or some do not answer."""
    answered = [s for s in served if s.serial]
    failed = [s for s in served if not s.serial]
    serials: dict[str, list[str]] = {}
    for s in answered:
        serials.setdefault(s.serial or "", []).append(s.node)
    if not answered:
        return CRITICAL, f"no node serves {name}: " + "; ".join(f"{s.node} {s.error}" for s in failed)
    parts = [f"{', '.join(nodes)} serve{'s' if len(nodes) == 1 else ''} serial {serial}"
             for serial, nodes in sorted(serials.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    parts += [f"{s.node}: {s.error}" for s in failed]
    if len(serials) > 1:
        return WARNING, f"{name}: the nodes serve {len(serials)} different certificates: " + "; ".join(parts)
    if failed:
        return WARNING, f"{name}: " + "; ".join(parts)
    return OK, f"{name}: " + "; ".join(parts)


def _node_arg(text: str) -> tuple[str, str]:
    node, sep, address = text.partition("=")
    if not sep or not node or not address:
        raise argparse.ArgumentTypeError(f"expected NODE=ADDRESS, got {text!r}")
    return node, address


# ------------------------------------------------------------------ renewal report
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def merge_report(old: dict[str, Any] | None, outcomes: list[dict[str, Any]], at: dt.datetime,
                 issuer: str) -> dict[str, Any]:
    """The report after a renewal pass: each certificate's latest outcome with its time (a pass for
    one service keeps the others' entries)."""
    certs = dict((old or {}).get("certificates") or {})
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    for o in outcomes:
        certs[str(o["name"])] = {k: o.get(k) for k in ("result", "reason", "serial", "not_after")} | {"at": stamp}
    return {"issuer": issuer, "at": stamp, "certificates": certs}


def write_report(outcomes: list[dict[str, Any]], issuer: str, path: str = DEFAULT_REPORT,
                 at: dt.datetime | None = None) -> dict[str, Any]:
    """Merge a pass's outcomes into the report at ``path`` (atomically, 0644: it holds no secret)."""
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        old = None
    report = merge_report(old, outcomes, at or _now(), issuer)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".acme-renewal.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def renewal_verdict(report: dict[str, Any] | None, certificate: str, max_age_s: float,
                    now: dt.datetime | None = None) -> tuple[int, str]:
    """WARNING when the last pass failed for ``certificate``, never reported it, or is too old."""
    entry = ((report or {}).get("certificates") or {}).get(certificate)
    if entry is None:
        return WARNING, f"{certificate}: no renewal pass has reported this certificate yet"
    try:
        age = ((now or _now()) - _parse_time(str(entry["at"]))).total_seconds()
    except (KeyError, ValueError):
        return UNKNOWN, f"{certificate}: the renewal report cannot be read"
    when = f"{age / 3600:.1f} h ago" if age >= 3600 else f"{max(age, 0):.0f} s ago"
    if entry.get("result") == "failed":
        return WARNING, f"{certificate}: the renewal {when} failed, the old certificate stays: {entry.get('reason')}"
    if age > max_age_s:
        return WARNING, f"{certificate}: the last renewal pass ran {when} (more than {max_age_s / 3600:g} h: " \
                        "is the issuer's schedule running?)"
    detail = f"serial {entry.get('serial')}, valid until {entry.get('not_after')}" if entry.get("serial") else ""
    return OK, f"{certificate}: {entry.get('result')} {when} ({entry.get('reason')}){', ' + detail if detail else ''}"


# ------------------------------------------------------------------ the command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="check_anycastlb_acme", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("serial", help="every LB node serves the same certificate")
    p.add_argument("--name", required=True, help="the SNI name to ask for")
    p.add_argument("--node", action="append", type=_node_arg, required=True, help="NODE=ADDRESS (repeat)")
    p.add_argument("-p", "--port", type=int, required=True, help="the nodes' probe port")
    p.add_argument("-t", "--timeout", type=float, default=5.0)
    p = sub.add_parser("renewal", help="the issuer's last renewal pass for a certificate")
    p.add_argument("--certificate", required=True, help="the certificate's name (acme-<service>)")
    p.add_argument("--report", default=DEFAULT_REPORT)
    p.add_argument("--max-age", type=float, default=25 * 3600, help="seconds (default: 25 h)")
    a = ap.parse_args(argv)
    if a.what == "serial":
        code, text = serial_verdict(a.name, [fetch_serial(n, addr, a.port, a.name, a.timeout) for n, addr in a.node])
    else:
        try:
            with open(a.report, encoding="utf-8") as fh:
                report = json.load(fh)
        except FileNotFoundError:
            report = None
        except (OSError, ValueError) as exc:
            print(f"UNKNOWN - {a.report}: {exc}")
            return UNKNOWN
        code, text = renewal_verdict(report, a.certificate, a.max_age)
    print(f"{LABELS[code]} - {text}")
    return code


if __name__ == "__main__":
    sys.exit(main())
