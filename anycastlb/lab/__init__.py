"""The lab: a catalog's whole fleet in network namespaces on one machine, driven by real Salt.

Built from the catalog's ``nodes`` and ``peers`` alone (see ``docs/lab.md``)::

    lab = up_network("campus.yaml", prefix="aclbt1234", external=[("mail1", "203.0.113.25")])
    lab.exec("lb1", ["ip", "addr"])
    start_salt(lab)
    lab.down()
"""
from __future__ import annotations

from .core import DEFAULT_PREFIX, Lab, LabError, default_statedir, load_lab, teardown_on_failure, up_network
from .peer import start_peers
from .responder import start_responder
from .salt import start_salt

__all__ = ["DEFAULT_PREFIX", "Lab", "LabError", "default_statedir", "load_lab", "start_peers",
           "start_responder", "start_salt", "teardown_on_failure", "up_network"]
