"""Constants, address types and the small helpers every part of the compiler shares."""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
from typing import Any

from .. import schema as S
from ..loader import Marked

MODEL_VERSION = 1
#: Longest ``extends`` chain (templates on templates).
MAX_EXTENDS = 16
HAPROXY_STATS_PORT = 8404
SSH_PORT = 22
SALT_PORTS = (4505, 4506)
#: Where the ACME issuer serves HTTP-01 tokens; every LB node routes /.well-known/acme-challenge/ there.
ACME_CHALLENGE_PORT = 8402
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
#: Where an LB node serves its ACME certificates on its own address, for the monitoring's serial check.
ACME_PROBE_PORT = 8403
#: The loopback ports a pooled frontend listens on when nftables hands it its VIPs' connections
#: (TPROXY, docs/traffic.md): above Linux's ephemeral range (32768-60999), so no client socket
#: of the node holds one.
ANCHOR_PORTS = range(61000, 65000)
BGP_PORT = 179
BFD_PORTS = (3784, 3785)
BFD_MULTIHOP_PORT = 4784
SECTION_KIND = {"nodes": "node", "peers": "peer", "clusters": "cluster", "templates": "template",
                "services": "service", "contacts": "contact", "tenants": "tenant"}
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def ident(name: str) -> str:
    """A name made safe for daemon identifiers (BIRD protocols, HAProxy sections, Icinga objects)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def family(addr: IP | Net) -> str:
    return "ipv4" if addr.version == 4 else "ipv6"


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge deeply (``over`` wins), everything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = Marked(file=getattr(over, "file", "") or getattr(base, "file", ""),
                     line=getattr(over, "line", None) or getattr(base, "line", None))
        for k, v in base.items():
            out[k] = v
            if isinstance(base, Marked) and k in base.marks:
                out.marks[k] = base.marks[k]
        out.key_files = dict(getattr(base, "key_files", {}))
        for k in base:
            out.key_files.setdefault(k, getattr(base, "file", ""))
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
            if isinstance(over, Marked) and k in over.marks:
                out.marks[k] = over.marks[k]
            out.key_files[k] = getattr(over, "file", "")
        return out
    return over


#: Check kinds HAProxy runs against the servers of an http/tcp service, and those healthd runs
#: against an anycast backend before it announces the VIP.
HAPROXY_CHECKS = ("ldap", "smtp", "mysql", "pgsql", "ssl_hello")
HEALTHD_CHECKS = ("dns", "kerberos")
CHECK_KINDS = ("http", "tcp") + HAPROXY_CHECKS + HEALTHD_CHECKS


def check_kind(c: S.Check) -> str | None:
    """The kind of a check (``http``, ``tcp``, ``ldap`` ...), or None when no kind is set."""
    return next((k for k in CHECK_KINDS if getattr(c, k) is not None), None)


def server_port(m: S.Service, port: S.Port) -> int:
    """The port on the backends for frontend ``port`` (``backend_port``: one number or a mapping)."""
    if isinstance(m.backend_port, dict):
        return m.backend_port.get(port.port, port.port)
    return m.backend_port or port.port


def acme_names(m: S.Service) -> list[str]:
    """The names an ACME certificate of service ``m`` covers: apache.server_name, then its aliases."""
    if m.apache is None or m.apache.server_name is None:
        return []
    return [m.apache.server_name] + [a for a in m.apache.aliases if a != m.apache.server_name]


def acme_certificate(sname: str) -> str:
    """The certificate name of an ACME service (in the issuer's store and the nodes' secrets slice)."""
    return f"acme-{sname}"


@functools.lru_cache(maxsize=65536)
def _addr_key(text: str) -> tuple[int, str]:
    try:
        net = ipaddress.ip_network(text, strict=False)
        return (net.version, f"{int(net.network_address):040d}/{net.prefixlen:03d}")
    except ValueError:
        return (0, text)


def copy_model(model: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a node model (for callers that add secrets to it)."""
    return copy.deepcopy(model)
