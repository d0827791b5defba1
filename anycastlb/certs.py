"""Certificate bundles, read by ``openssl``: the check before a certificate goes live, and its facts.

A bundle is what HAProxy loads (``crt``): the certificate, its chain, then the private
key, in PEM. :func:`check_bundle` is run on every new or renewed bundle before it is
written or swapped into a running HAProxy; :func:`cert_info` gives the serial and
expiry that renewal and monitoring compare. ``openssl`` itself parses the PEM (no
second parser); secret text never appears in a message.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n.*?\n-----END \1-----", re.S)


@dataclass(frozen=True)
class CertInfo:
    """The facts of a bundle's first (leaf) certificate."""

    serial: str          # upper-case hex, as ``openssl x509 -serial`` prints it
    not_after: dt.datetime
    subject: str

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        """Lifetime left at ``now`` (default: the current UTC time)."""
        return self.not_after - (now or dt.datetime.now(dt.timezone.utc))


def split_bundle(pem: str) -> tuple[list[str], list[str]]:
    """(certificate blocks, private key blocks) of a PEM bundle, in order."""
    certs: list[str] = []
    keys: list[str] = []
    for m in _BLOCK.finditer(pem.replace("\r\n", "\n")):
        (certs if m.group(1) == "CERTIFICATE" else keys if "PRIVATE KEY" in m.group(1) else []).append(m.group(0))
    return certs, keys


def _openssl(args: list[str], data: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """``openssl ARGS`` reading ``data`` from a 0600 temp file (never from argv, never logged)."""
    fd, path = tempfile.mkstemp(prefix="aclb-pem-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        return subprocess.run(["openssl", *args, "-in", path], capture_output=True, text=True, timeout=timeout,
                              check=False)
    finally:
        os.remove(path)


def cert_info(pem: str) -> CertInfo:
    """Serial, expiry and subject of the first certificate in ``pem``; ``ValueError`` if there is none."""
    certs, _ = split_bundle(pem)
    if not certs:
        raise ValueError("no certificate in the bundle")
    proc = _openssl(["x509", "-noout", "-serial", "-enddate", "-subject", "-nameopt", "RFC2253"], certs[0])
    if proc.returncode != 0:
        raise ValueError(f"openssl cannot read the certificate: {proc.stderr.strip().splitlines()[-1:]}")
    fields = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    not_after = dt.datetime.strptime(fields["notAfter"].replace("  ", " "), "%b %d %H:%M:%S %Y %Z")
    return CertInfo(serial=fields["serial"].upper(), not_after=not_after.replace(tzinfo=dt.timezone.utc),
                    subject=fields.get("subject", "").strip())


def check_bundle(pem: str, now: dt.datetime | None = None) -> list[str]:
    """What is wrong with a bundle before it may go live (empty: nothing).

    One certificate at least, exactly one private key, the key's public half equal to
    the leaf certificate's, and the certificate valid now.
    """
    certs, keys = split_bundle(pem)
    if not certs:
        return ["no certificate in the bundle"]
    if len(keys) != 1:
        return [f"the bundle holds {len(keys)} private keys (one is expected)"]
    problems = []
    cert_pub = _openssl(["x509", "-noout", "-pubkey"], certs[0])
    if cert_pub.returncode != 0:
        return ["openssl cannot read the certificate"]
    key_pub = _openssl(["pkey", "-pubout"], keys[0])
    if key_pub.returncode != 0:
        return ["openssl cannot read the private key"]
    if cert_pub.stdout.strip() != key_pub.stdout.strip():
        problems.append("the private key does not match the certificate")
    info = cert_info(pem)
    when = now or dt.datetime.now(dt.timezone.utc)
    if info.not_after <= when:
        problems.append(f"the certificate (serial {info.serial}) expired at {info.not_after:%Y-%m-%d %H:%M} UTC")
    return problems


def runtime_payload(pem: str) -> str:
    """The bundle as HAProxy's ``set ssl cert`` payload: no empty line (one ends the payload)."""
    return "\n".join(line for line in pem.replace("\r\n", "\n").splitlines() if line.strip()) + "\n"
