"""BIRD 2: ``/etc/bird/bird.conf`` from ``model["bgp"]``, for speakers, route reflectors and listeners.

- speaker: exports a VIP only if the catalog lets it announce the VIP *and*
  anycastlb-healthd has put the VIP's route into kernel table 4242 (learned by
  the ``healthd4``/``healthd6`` kernel protocols, see :mod:`anycastlb.healthd`);
  imports nothing.
- route reflector: accepts from its clients only host routes inside
  ``vip_pools``; hands every path (ADD-PATH tx) to the peers (``next hop keep``:
  their ECMP goes straight to the LB nodes) and to the listeners; nothing goes
  into its own kernel.
- listener (monitoring): receives every path (ADD-PATH rx) and keeps them in
  BIRD only, so ``birdc show route for P all`` counts the announcers.

Checked with ``bird -p -c``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from ..paths import DIRECT
from ..secrets import MASK
from . import quote
from . import (CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, run_checker,
               template_file, under)

CONFIG = "/etc/bird/bird.conf"
CONTROL_SOCKET = DIRECT.bird_socket  # the same in both init modes (anycastlb/paths.py)
#: Must match healthd.json (``table``/``proto``); :mod:`anycastlb.render.healthd` uses the same numbers.
HEALTH_TABLE = 4242
HEALTH_PROTO = 252


@renderer("bird", CONFIG)
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """bird.conf (0640 root:bird when it holds a BGP password)."""
    bgp = model["bgp"]
    passwords = secrets.get("bgp_passwords") or {}
    neighbors = []
    secret = False
    for nb in bgp["neighbors"]:
        nb = dict(nb)
        if nb.get("password"):
            if nb["password"] not in passwords:
                raise RenderError(f"bird: BGP password {nb['password']!r} (neighbour {nb['name']}) "
                                  "is not in the secrets")
            value = str(passwords[nb["password"]])
            try:
                nb["password_value"] = quote.bird(value)
            except RenderError:  # the message would print the value: name the password instead
                raise RenderError(f"BGP password {nb['password']!r} holds a double quote or a control character, "
                                  "which a BIRD string cannot carry") from None
            secret = True
        else:
            nb["password_value"] = None
        nb["direct"] = not nb.get("multihop", False)   # stated in the catalog (bgp.session, peers' session)
        neighbors.append(nb)
    announce: dict[str, list[str]] = {"ipv4": [], "ipv6": []}
    for prefix in bgp["announce"]:
        announce["ipv4" if ipaddress.ip_network(prefix).version == 4 else "ipv6"].append(prefix)
    hold_s = max(3, math.ceil(bgp["hold_ms"] / 1000))
    # Debian's bird.service runs `bird -u bird -g bird`: a config with passwords is readable by
    # root and group bird only (the daemon re-reads it as user bird on `birdc configure`).
    return [template_file(
        CONFIG, "bird/bird.conf.j2", 0o640 if secret else 0o644, "bird" if secret else "",
        node=model["node"],
        state=model["state"],
        bgp=bgp,
        pools=bgp["vip_pools"],
        announce=announce,
        neighbors=neighbors,
        bfd=bgp["bfd"] if any(nb["bfd"] for nb in neighbors) else None,
        multihop=any(nb["bfd"] and not nb["direct"] for nb in neighbors),
        hold_s=hold_s,
        keepalive_s=max(1, hold_s // 3),
        health={"table": HEALTH_TABLE, "proto": HEALTH_PROTO},
    )]


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """``bird -p -c`` on the staged config."""
    cmd = ["bird", "-p", "-c", under(staging, CONFIG)]
    return run_checker(cmd)


_PASSWORD = re.compile(r'^(\s*password\s+)"[^"\n]*"', re.M)


def redact(text: str) -> str:
    """bird.conf with every BGP password replaced by the mask (for diffs)."""
    return _PASSWORD.sub(lambda m: f'{m.group(1)}"{MASK}"', text)


SPEC = DaemonSpec(
    name="bird",
    redact=redact,
    wanted=lambda m: m.get("bgp") is not None,
    render=render,
    check=check,
    leaves=(CONFIG,),
    binary="bird",
    packages=("bird2",),
)
