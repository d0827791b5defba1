"""The health agent's part of a node model: what it watches before it announces each VIP."""

from __future__ import annotations

from typing import Any

from ..model import Announcement, HealthModel, NodeModel
from .index import Index


class HealthBuilder(Index):
    """healthd's announcements."""

    def health_model(self, nid: str, model: NodeModel) -> HealthModel:
        """What the node's health agent watches before it announces each VIP."""
        anns: list[Announcement] = []
        bgp = model["bgp"]
        if bgp is None or bgp["role"] != "speaker":
            return {"announcements": []}
        # bind address → (frontend, its services, the backends that address reaches), in model order:
        # one pass over the frontends, not VIPs × frontends (a pooled frontend binds hundreds of VIPs)
        by_bind: dict[str, list[tuple[dict[str, Any], set[str], list[str]]]] = {}
        for f in (model["haproxy"] or {"frontends": []})["frontends"]:
            services = set(f["services"])
            reached: dict[str, list[str]] = {}
            for p in f["pool"] or []:
                reached.setdefault(p["address"], []).append(p["backend"])
            for addr in dict.fromkeys(f["binds"]):
                by_bind.setdefault(addr, []).append((f, services, reached[addr] if f["pool"] else f["backends"]))
        for v in bgp["vips"]:
            if v["prefix"] not in bgp["announce"]:
                continue
            lb_svcs = [s for s in v["services"] if self.services[s].model.mode != "anycast"]
            if lb_svcs:
                fes = [(f, reached) for f, services, reached in by_bind.get(v["address"], [])
                       if not services.isdisjoint(lb_svcs)]
                anns.append({"prefix": v["prefix"], "services": lb_svcs,
                             "watch": {"type": "haproxy", "frontends": sorted(f["name"] for f, _ in fes),
                                       "backends": sorted({b for _, reached in fes for b in reached})}})
            for sname in v["services"]:
                svc = self.services[sname]
                if svc.model.mode != "anycast":
                    continue
                tcp_ports = [p.port for p in svc.ports if p.protocol == "tcp"]
                check = self.check_model(svc, tcp_ports[0] if tcp_ports else None)
                check["address"] = v["address"]
                if svc.model.check.unit:
                    check["unit"] = svc.model.check.unit
                anns.append({"prefix": v["prefix"], "services": [sname], "watch": check})
        return {"announcements": anns}
