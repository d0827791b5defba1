"""The lab's ACME CA: Pebble (Debian's RFC 8555 test CA) in a namespace of its own.

``lab up`` wires it whenever the catalog has an ``acme`` section:

- a lab host ``acme-ca`` on the client net (``203.0.113.250``, or the next free address
  below it), reached from the fleet through the first peer router like any outside host;
- Pebble listening there on port 14000 (directory ``/dir``), its API served with a
  certificate of a self-made lab CA (:class:`anycastlb.lab.pki.LabCA`), validating HTTP-01
  on port 80 of the names it is asked for;
- dnsmasq beside it, Pebble's resolver: every ``apache`` name (and alias) of every ``http``
  service resolves to the service's first IPv4 VIP, so the CA's validation request enters
  the anycast fleet as a client's would and lands on any LB node of the cluster;
- the salt-master's ext_pillar entry gets ``acme_directory`` (Pebble's directory instead of
  the catalog's) and ``acme_ca`` (the lab CA, for the issuer's TLS to Pebble);
- the lab's clients trust Pebble's issuing root (fetched from its management API, it is
  new on every start): ``<statedir>/acme-ca/root.pem``, which ``lab status`` uses for ACME
  services.

Teardown is the lab's: both processes are in the lab's registry and in its namespace.
"""
from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pki import LabCA

if TYPE_CHECKING:
    from ..compiler import Fleet
    from .core import Lab

HOST = "acme-ca"
PORT = 14000
MANAGEMENT_PORT = 15000
FIRST = ipaddress.IPv4Address("203.0.113.250")


def wanted(catalog: str | Path) -> bool:
    """Whether the catalog uses ACME (it has an ``acme`` section): then ``lab up`` wires the CA."""
    from ..loader import load_catalog
    return bool(load_catalog(catalog).get("acme"))


def address(external: list[tuple[str, str]]) -> tuple[str, str]:
    """``(HOST, address)`` for the CA on the client net: the first free address from ``FIRST`` down."""
    taken = {a for _, a in external} | {"203.0.113.100", "203.0.113.1"}
    addr = FIRST
    while str(addr) in taken:
        addr -= 1
    return HOST, str(addr)


def names(fleet: "Fleet") -> dict[str, str]:
    """Name → IPv4 VIP for every ``apache`` name and alias of every ``http`` service (wildcards left out)."""
    out: dict[str, str] = {}
    for svc in fleet.services.values():
        apache = svc.get("apache") or {}
        vip4 = next((v for v in svc["vips"] if ":" not in v), None)
        if svc["mode"] != "http" or vip4 is None:
            continue
        for name in [apache.get("server_name"), *(apache.get("aliases") or [])]:
            if name and "*" not in name:
                out.setdefault(str(name), vip4)
    return out


def _files(lab: "Lab") -> Path:
    d = lab.statedir / "acme-ca"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_dns(lab: "Lab") -> int:
    """dnsmasq in the CA's namespace: Pebble's resolver for the services' names."""
    info = lab.meta["acme_ca"]
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--pid-file=", "--user=root", "--log-facility=-", "--bind-interfaces",
            f"--listen-address={info['address']}", "--port=53"]
    argv += [f"--host-record={name},{vip}" for name, vip in sorted(info["names"].items())]
    return lab.spawn(HOST, argv, "acme-dns")


def stop_dns(lab: "Lab") -> None:
    """Stop Pebble's resolver: the CA can no longer resolve any name, so it refuses every authorization."""
    lab.stop(HOST, "acme-dns", grace=2.0)


def _fetch(lab: "Lab", url: str, cafile: str) -> str:
    code = ("import ssl, sys, urllib.request; ctx = ssl.create_default_context(cafile=sys.argv[2]); "
            "print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=2).read().decode())")
    from .salt import PYTHON
    r = lab.exec(HOST, [PYTHON, "-c", code, url, cafile], timeout=20)
    return r.stdout if r.returncode == 0 else ""


def start(lab: "Lab", fleet: "Fleet", addr: str, timeout: float = 20.0) -> dict[str, Any]:
    """Start Pebble and its resolver in the ``acme-ca`` host; return what the lab records in ``meta``."""
    d = _files(lab)
    ca = LabCA(d / "lab-ca")
    api = ca.issue([addr, HOST], days=7)
    (d / "pebble-cert.pem").write_text(api.cert)
    key = d / "pebble-key.pem"
    key.write_text(api.key)
    key.chmod(0o600)
    (d / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"{addr}:{PORT}", "managementListenAddress": f"{addr}:{MANAGEMENT_PORT}",
        "certificate": str(d / "pebble-cert.pem"), "privateKey": str(key),
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    info: dict[str, Any] = {"address": addr, "directory": f"https://{addr}:{PORT}/dir", "ca": str(ca.cert_path),
            "root": str(d / "root.pem"), "names": names(fleet)}
    lab.meta["acme_ca"] = info
    lab.save()
    start_dns(lab)
    lab.spawn(HOST, ["pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"{addr}:53"], "pebble",
              # no reuse of earlier validations: every issuance asks the fleet's challenge route again
              env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
    deadline = time.monotonic() + timeout
    root = ""
    while not root.startswith("-----BEGIN CERTIFICATE-----"):
        if time.monotonic() > deadline:
            from .core import LabError
            raise LabError(f"Pebble did not answer on {addr}:{MANAGEMENT_PORT} within {timeout} s "
                           f"(see {lab.log_path(HOST, 'pebble')})")
        time.sleep(0.2)
        root = _fetch(lab, f"https://{addr}:{MANAGEMENT_PORT}/roots/0", str(ca.cert_path))
    Path(info["root"]).write_text(root)
    return info


def master_options(lab: "Lab") -> dict[str, str]:
    """What the salt-master's ext_pillar entry gets in a lab with the CA (nothing without it)."""
    info = lab.meta.get("acme_ca")
    return {"acme_directory": info["directory"], "acme_ca": info["ca"]} if info else {}


def trust(lab: "Lab") -> str | None:
    """The CA file a lab client verifies ACME certificates with (Pebble's issuing root), if the lab has one."""
    info = lab.meta.get("acme_ca")
    return info["root"] if info and Path(info["root"]).exists() else None


def renew(lab: "Lab", *args: str) -> str:
    """``salt-run anycastlb.renew ARGS`` on the master (the issuer): one line saying what it did.
    ``lab up`` runs it once the fleet is deployed, so the ACME services serve the CA's certificates."""
    from .core import LabError
    from .ops import salt_run
    rc, ret, raw = salt_run(lab, "anycastlb.renew", *args, timeout=300)
    if not isinstance(ret, dict) or not isinstance(ret.get("outcomes"), list):
        raise LabError(f"salt-run anycastlb.renew {' '.join(args)} gave no outcome (rc {rc}): {raw[-1500:]}")
    issued = [f"{o['name']} serial {o['serial']}" for o in ret["outcomes"] if o["result"] == "issued"]
    failed = [f"{o['name']}: {o['reason']}" for o in ret["outcomes"] if o["result"] == "failed"]
    return (f"salt-run anycastlb.renew: {ret['comment']}" + (f"; issued {', '.join(issued)}" if issued else "")
            + (f"; FAILED {'; '.join(failed)}" if failed else ""))
