"""Flow steering's part of a node model: the groups it steers in and its peers there (anycastlb.steering)."""

from __future__ import annotations

import functools

from ..model import NodeModel, SteeringModel
from ..steering import Group, group, node_steering
from .index import Index


class SteeringBuilder(Index):
    """Every cluster and anycast service whose nodes hand each other the flows they do not own."""

    @functools.cached_property
    def steering_groups(self) -> list[Group]:
        """One group per cluster and per anycast service with steering on (default: more than one node)."""
        groups = []
        for cid in sorted(self.clusters):
            svcs = [self.services[s] for s in self.cluster_services[cid]]
            groups.append(group(f"cluster {cid}", [x for x in self.clusters[cid].nodes if x in self.nodes],
                                self.clusters[cid].steering, [ip for s in svcs for ip in s.vip_texts],
                                [p.port for s in svcs for p in s.ports if p.protocol == "tcp"]))
        for sname in sorted(self.services):
            svc = self.services[sname]
            if svc.model.mode == "anycast":
                groups.append(group(f"anycast {sname}", [b for b in svc.model.backends if b in self.nodes],
                                    svc.model.steering, list(svc.vip_texts),
                                    [p.port for p in svc.ports if p.protocol == "tcp"]))
        return [g for g in groups if g is not None]

    def steering_model(self, nid: str, model: NodeModel) -> SteeringModel | None:
        """The groups the node steers in; none on a node whose firewall the site runs (``unmanaged``):
        the steering tables are loaded with our ruleset."""
        fw = model["firewall"]
        if fw is None or not fw["managed"]:
            return None
        return node_steering(nid, self.steering_groups,
                             {n: (x.address, x.address6) for n, x in self.nodes.items()})
