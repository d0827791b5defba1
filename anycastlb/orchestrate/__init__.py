"""Rolling deploys without Salt, one module per job.

- :mod:`.lint`: the verdict on a catalog (a fleet, or every error);
- :mod:`.plan`: the ordered plan, below;
- :mod:`.master`: the master's side (drain and undrain with the route reflectors, the
  prefixes that must come back, the BGP session check, the state files);
- :mod:`.git`: the catalog's copies and its git checkout;
- reading BIRD's and HAProxy's answers is :mod:`anycastlb.answers` (re-exported here).

``_runners/anycastlb_mod.py`` (the master side, over :class:`.master.Master`) and
:mod:`anycastlb.minion` (the node side) are thin adapters; ``salt/anycastlb/orch/deploy.sls`` only
lays the plan out as states.

The plan (:func:`plan`) is ordered so that no service loses its last announcer:

1. route reflectors, one at a time (apply, verify: every BGP session Established);
2. the HAProxy nodes of each cluster, one at a time: drain (withdraw, wait until the
   route reflectors carry none of the node's paths), apply, verify, undrain (wait until
   they carry its paths again) — so at most one node of a cluster is ever out; a node new
   to the cluster goes last, so its peers' flow steering knows it before it announces;
3. the anycast backends, the same way (new ones last);
4. the web (and other managed) backends, one at a time (apply, verify);
5. monitoring; 6. every other node (the salt-master last).

Drain only where the change can move traffic: with the catalog last deployed at hand
(``deployed``, see :func:`routing_change`), a node whose BGP sessions and addresses the
change leaves alone and that loses no announcement is applied in place: HAProxy reloads
seamlessly, BIRD reconfigures its filters softly, healthd and nftables swap atomically, so
nothing reaches the routers. Draining such a node would be the only thing that moves
flows: the routers' ECMP rehashes when a next hop goes and comes back, and the open
connections that land on the other node are reset. ``drain="always"`` drains every node
with another announcer, as without a deployed catalog.

A node whose catalog ``state`` is ``drain``/``maintenance`` is drained and applied but
never undrained: the catalog wins. A node drained at runtime by an operator (its drain
file exists and was not written by an orchestration) stays drained too. The runtime
drain file (``anycastlb.drain``, for now) and the catalog's ``state: drain`` (durable:
the node's health agent gets no announcements at all) are two different things.
"""

from __future__ import annotations

from ..answers.bird import (announcers, bgp_sessions, carried_via, first_hops, node_addresses, parse_protocols,
                            parse_routes, sessions_with)
from ..answers.haproxy import verify_haproxy
from .git import GitError, git_checkout, snapshot, snapshot_path
from .lint import Lint, lint
from .master import Master, config_of, expected_back
from .plan import DRAIN_MODES, ORCHESTRATE, PHASES, Step, out_at_once, plan, routing_change

__all__ = ["announcers", "bgp_sessions", "carried_via", "first_hops", "node_addresses", "parse_protocols",
           "parse_routes", "sessions_with", "verify_haproxy", "GitError", "git_checkout", "snapshot",
           "snapshot_path", "Lint", "lint", "Master", "config_of", "expected_back", "DRAIN_MODES", "ORCHESTRATE",
           "PHASES", "Step", "out_at_once", "plan", "routing_change"]
