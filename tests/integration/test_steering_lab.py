"""Flow steering in the campus lab: long-lived connections held through a drain and an undrain of
lb1 lose nothing with steering on, and are reset with it off (so this test can fail).

One lab (about 2 minutes): 30 connections (raw tcp through imap, HTTP keep-alive over TLS to
www on IPv4 and IPv6), a request every 0.5 s on each; benchmarks/longlived.py runs the full
sequence of fleet changes.
"""
from __future__ import annotations

import os
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]


def drain_and_undrain(lab, holder_targets):
    from anycastlb.lab import ops
    from anycastlb.lab.longlived import Holder, tally

    holder = Holder(lab, "client", holder_targets, per_target=10, duration=120).start()
    try:
        time.sleep(2)
        t0 = time.monotonic()
        for verb in ("drain", "undrain"):
            rc, ret, raw = ops.salt_run(lab, f"anycastlb.{verb}", "node=lb1",
                                        *(["deadline=0"] if verb == "drain" else []))
            assert rc == 0 and ret["result"] is True, raw
            time.sleep(3)
        t1 = time.monotonic()
    finally:
        res = holder.stop()
    assert res["requests"] > 30 * 10, res["requests"]      # every connection answered, over and over
    return tally(res["events"], t0, t1), [e for e in res["events"] if e["kind"] != "closed"][:3]


def test_drain_and_undrain_reset_nothing_with_steering_and_connections_without(campus_lab_factory):
    from anycastlb.lab.longlived import campus_targets, counters, set_steering

    with campus_lab_factory("steer", restart_minions=True) as lab:
        targets = campus_targets(lab)
        lbs = ("lb1", "lb2", "lb3")
        before = counters(lab, lbs)
        on, examples = drain_and_undrain(lab, targets)
        steered = counters(lab, lbs)
        assert on == {"broken": 0, "closed": 0, "stall": 0}, (on, examples)
        # the moved flows really went through the steering rules: copies out, and the
        # copies that reached a node that does not own them either dropped there
        assert steered["steered"] > before["steered"] and steered["copies_dropped"] > before["copies_dropped"]

        set_steering(lab, "edge", False)              # the catalog's switch, applied to the LB nodes
        off, examples = drain_and_undrain(lab, targets)
        assert off["broken"] > 0, (off, examples)     # lb1's connections were reset at the drain
        print(f"\ndrain + undrain of lb1, 30 long-lived connections: steering on {on}, off {off}; "
              f"steered {steered['steered'] - before['steered']} packets, "
              f"{steered['copies_dropped'] - before['copies_dropped']} copies dropped by peers")
