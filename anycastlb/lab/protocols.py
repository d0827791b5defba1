"""Lab stand-ins that speak what a service's health check asks (the lab's unmanaged software).

- ``dns``: every anycast backend of a service checked by a DNS query runs a real resolver,
  dnsmasq (Debian's dnsmasq-base), in its namespace on the check's port (udp and tcp). It
  knows the checked name (``--host-record``) and forwards nothing.
- ``ldap``: the external backends of a service checked by ``ldap-check`` get a responder
  whose ports answer LDAP binds (:func:`anycastlb.lab.responder.ldap_bind_response`).
- ``kerberos``: every anycast backend of a service checked by a Kerberos AS-REQ runs a real
  KDC, MIT ``krb5kdc`` (Debian's krb5-kdc), in its namespaces on the check's port (udp and
  tcp), with a fresh database of the check's realm at the packaged paths of the node's own
  ``/etc`` and ``/var/lib`` (the lab's per-node overlays).
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
    """``{host: {"dns": [(port, name, qtype)], "ldap": [tcp ports], "kerberos": [(port, realm)]}}``:
    the stand-ins to start."""
    out: dict[str, dict[str, Any]] = {}
    for sname, svc in fleet.services.items():
        check = svc["check"]
        if check["type"] == "dns":
            for host in svc["backends"]:
                out.setdefault(host, {}).setdefault("dns", []).append((check["port"], check["name"], check["qtype"]))
        elif check["type"] == "kerberos":
            for host in svc["backends"]:
                out.setdefault(host, {}).setdefault("kerberos", []).append((check["port"], check["realm"]))
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


#: Where Debian's krb5-kdc keeps its configuration and database (in each node's own overlay).
KDC_CONF, KDC_DB = "/etc/krb5kdc/kdc.conf", "/var/lib/krb5kdc/principal"


def kdc_conf(realm: str, port: int) -> str:
    """kdc.conf of a lab KDC serving ``realm`` on ``port`` (udp and tcp)."""
    return (f"[kdcdefaults]\n    kdc_ports = {port}\n    kdc_tcp_listen = {port}\n"
            f"[realms]\n    {realm} = {{\n        database_name = {KDC_DB}\n"
            f"        key_stash_file = /etc/krb5kdc/stash\n    }}\n"
            f"[logging]\n    kdc = FILE:/var/log/krb5kdc.log\n")


def start_kdc(lab: "Lab", host: str, port: int, realm: str) -> int:
    """krb5kdc in ``host``'s namespaces serving ``realm`` on ``port`` with a fresh database; its PID."""
    env = {"KRB5_CONFIG": "/etc/krb5kdc/krb5.conf", "KRB5_KDC_PROFILE": KDC_CONF}
    lab.write_file(host, KDC_CONF, kdc_conf(realm, port))
    lab.write_file(host, env["KRB5_CONFIG"], f"[libdefaults]\n    default_realm = {realm}\n")
    lab.exec(host, ["rm", "-f", KDC_DB, KDC_DB + ".ok", KDC_DB + ".kadm5", KDC_DB + ".kadm5.lock"], check=True)
    # a throw-away master password: the lab's database holds only krbtgt and the defaults
    lab.exec(host, ["kdb5_util", "-r", realm, "-P", "lab-" + host, "create", "-s"], env=env, check=True)
    return lab.spawn(host, ["krb5kdc", "-n", "-r", realm], f"kdc-{port}", env=env)
