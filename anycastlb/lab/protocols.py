"""Lab stand-ins that speak what a service's health check asks (the lab's unmanaged software).

- ``dns``: every anycast backend of a service checked by a DNS query runs a real resolver,
  dnsmasq (Debian's dnsmasq-base), in its namespace on the check's port (udp and tcp). It
  knows the checked name (``--host-record``) and forwards nothing.
- ``ldap``: the external backends of a service checked by ``ldap-check`` get a responder
  whose ports answer LDAP binds (:func:`anycastlb.lab.responder.ldap_bind_response`).
"""
from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..compiler import Fleet
    from .core import Lab

#: The address a lab resolver gives the checked name (a documentation address).
ANSWER4, ANSWER6 = "192.0.2.1", "2001:db8::1"


def protocol_stand_ins(fleet: "Fleet") -> dict[str, dict[str, Any]]:
    """``{host: {"dns": [(port, name, qtype)], "ldap": [tcp ports]}}`` for the stand-ins to start."""
    out: dict[str, dict[str, Any]] = {}
    for sname, svc in fleet.services.items():
        check = svc["check"]
        if check["type"] == "dns":
            for host in svc["backends"]:
                out.setdefault(host, {}).setdefault("dns", []).append((check["port"], check["name"], check["qtype"]))
        elif check["type"] == "ldap":
            mapping = svc["backend_port"]
            ports = set()
            for p in svc["ports"]:
                number = int(p.split("/")[0])
                ports.add(mapping.get(number, number) if isinstance(mapping, dict) else mapping or number)
            if check.get("port"):
                ports.add(check["port"])
            for host in svc["backends"]:
                if host not in fleet.nodes:
                    out.setdefault(host, {}).setdefault("ldap", []).extend(sorted(ports))
    return out


def start_resolver(lab: "Lab", host: str, port: int, names: list[tuple[str, str]]) -> int:
    """dnsmasq in ``host``'s namespaces answering ``names`` ((name, qtype)) on ``port``; its PID."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    argv = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
            f"--port={port}", "--user=root", "--log-facility=-"]
    for name, _qtype in names:
        argv.append(f"--host-record={name},{ANSWER4},{ANSWER6}")
    return lab.spawn(host, argv, f"resolver-{port}")
