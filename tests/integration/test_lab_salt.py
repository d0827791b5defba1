"""Salt bootstrap in the lab: a master in the salt-master node, a minion in every node."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from anycastlb.lab import start_salt, up_network
from anycastlb.lab.salt import ping

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

CATALOG = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"


def test_master_and_every_minion_answer_test_ping():
    prefix = "aclbt" + secrets.token_hex(2)
    lab = up_network(CATALOG, prefix=prefix)
    try:
        t0 = time.monotonic()
        secs = start_salt(lab)
        print(f"\nsalt-master + {len(lab.nodes)} minions answering test.ping after {secs} s "
              f"(wall {time.monotonic() - t0:.1f} s)")
        assert ping(lab) == set(lab.nodes)
        # The minions run with the node's private paths: keys under its own /etc/salt.
        assert lab.exec("lb1", ["test", "-f", "/etc/salt/pki/minion/minion.pem"]).returncode == 0
        assert not os.path.exists("/etc/salt/pki/minion/minion.pem")
        accepted = lab.exec("salt", ["ls", "/etc/salt/pki/master/minions"]).stdout.split()
        assert sorted(accepted) == sorted(lab.nodes)
    finally:
        lab.down()
    assert not any(n.startswith(prefix + "-") for n in os.listdir("/run/netns"))
    assert not lab.statedir.exists()
