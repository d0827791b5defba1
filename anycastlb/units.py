"""The systemd units of a node: Debian's own for the daemons, anycastlb's own for the health agent.

On a systemd host (:func:`anycastlb.service.detect_mode`) the Salt states
(``salt/anycastlb/units.sls``) install :func:`unit_files` and enable :func:`enabled_units`,
so a rebooted node comes back by itself: ``nftables.service`` loads the firewall before
the network is up (Debian's unit: ``Before=network-pre.target``, and ``/etc/nftables.conf``
includes our table, :data:`NFT_INCLUDE`), the daemons start from their own units, and
``anycastlb-healthd`` announces a VIP only once HAProxy serves it.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from typing import Any, Sequence

HEALTHD_UNIT = "anycastlb-healthd.service"
UNIT_DIR = "/etc/systemd/system"
#: The line ``/etc/nftables.conf`` (loaded by Debian's nftables.service at boot) needs for our table.
NFT_INCLUDE = 'include "/etc/nftables.d/*.nft"'


def healthd_unit(python: str | None = None) -> str:
    """``anycastlb-healthd.service``: runs the health agent with the Python anycastlb is installed in."""
    exe = python or sys.executable
    return f"""# managed by anycastlb (anycastlb/units.py)
[Unit]
Description=anycastlb health agent: announces each VIP only while its service is healthy
# healthd watches HAProxy's pidfile and stats socket (it refuses to start without them) and
# hands its routes to BIRD through a kernel table.
After=network-online.target nftables.service haproxy.service bird.service
Wants=network-online.target

[Service]
Type=simple
# After a reboot lo has none of the VIPs (Salt puts them there when it applies): put the
# announced ones back before anything is announced, or their traffic would be dropped.
ExecStartPre={exe} -m anycastlb.units vips /etc/anycastlb/healthd.json
ExecStart={exe} -m anycastlb.healthd_main --config /etc/anycastlb/healthd.json
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM withdraws every route it installed before it exits. At shutdown healthd stops
# before HAProxy and BIRD (it is ordered after them): after a clean stop, give the routers a
# second to move the traffic away, and HAProxy's accepted requests time to finish.
ExecStopPost=/bin/sh -c '[ "$$SERVICE_RESULT" != success ] || sleep 1'
Restart=always
RestartSec=1s

[Install]
WantedBy=multi-user.target
"""


def unit_files(model: dict[str, Any], python: str | None = None) -> dict[str, str]:
    """Path → text of the unit files anycastlb ships that this node needs."""
    from .render import daemons

    wanted = {d.name for d in daemons() if d.wanted(model)}
    return {f"{UNIT_DIR}/{HEALTHD_UNIT}": healthd_unit(python)} if "healthd" in wanted else {}


def enabled_units(model: dict[str, Any]) -> list[str]:
    """The units this node must have enabled, in apply order (``nftables`` is Debian's loader unit)."""
    from .render import daemons
    from .service import services

    known = services()
    out = []
    for spec in daemons():
        if not spec.wanted(model):
            continue
        if spec.name == "nftables":
            out.append("nftables.service")
        elif spec.name in known and known[spec.name].unit:
            out.append(known[spec.name].unit + ".service")
    return out


def vip_addresses(config_path: str) -> list[str]:
    """The host prefixes healthd announces (its VIPs), as ``addr/len`` for ``lo``."""
    from .healthd import load_config

    out = []
    for ann in load_config(config_path).announcements:
        net = ipaddress.ip_network(ann.prefix)
        if net.prefixlen == net.max_prefixlen:
            out.append(str(net))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m anycastlb.units vips HEALTHD_JSON``: put the announced VIPs on ``lo`` (idempotent)."""
    from .healthd import ConfigError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "vips":
        print("usage: python -m anycastlb.units vips HEALTHD_JSON", file=sys.stderr)
        return 2
    try:
        vips = vip_addresses(args[1])
    except ConfigError as exc:
        print(f"anycastlb-vips: {exc}", file=sys.stderr)
        return 1
    for v in vips:
        r = subprocess.run(["ip", "addr", "replace", v, "dev", "lo"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"anycastlb-vips: ip addr replace {v} dev lo: {r.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"anycastlb-vips: {len(vips)} VIP(s) on lo: {' '.join(vips) or 'none'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
