"""anycastlb.drain / undrain / status against a real anycastlb-healthd in a network namespace."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PREFIX = "192.0.2.10/32"


def routes(ns: str) -> str:
    # (the table does not exist, and `ip` fails, until the first route goes in)
    return subprocess.run(["ip", "-n", ns, "route", "show", "table", "4242"], capture_output=True, text=True,
                          check=False).stdout


@pytest.fixture
def healthd(tmp_path):
    """anycastlb-healthd announcing one always-healthy prefix, in its own namespace and files."""
    ns = f"aclbt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    conf = tmp_path / "healthd.json"
    conf.write_text(json.dumps({"state_file": str(tmp_path / "state.json"), "drain_file": str(tmp_path / "drain"),
                                "announcements": [{"prefix": PREFIX, "service": "www", "watch": {"type": "always"}}]}))
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "anycastlb.healthd_main",
                             "--config", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while PREFIX.split("/")[0] not in routes(ns):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "healthd did not announce"
            time.sleep(0.05)
        yield ns, conf
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def loaders(tmp_path, catalog_copy, make_minion_opts):
    from saltfactories.utils.functional import Loaders

    lds = Loaders(make_minion_opts(tmp_path / "minion", "lb2", catalog_copy, None))
    yield lds
    lds.reset_state()


def test_drain_withdraws_and_undrain_announces_again(loaders, healthd, tmp_path):
    ns, conf = healthd
    ret = loaders.modules.anycastlb.drain(config=str(conf))
    assert ret["result"] is True, ret
    assert ret["prefixes"] == {PREFIX: False}
    assert (tmp_path / "drain").exists()
    assert "192.0.2.10" not in routes(ns)
    assert ret["waited_ms"] < 2000

    ret = loaders.modules.anycastlb.undrain(config=str(conf))
    assert ret["result"] is True, ret
    assert not (tmp_path / "drain").exists()
    deadline = time.monotonic() + 5
    while "192.0.2.10" not in routes(ns):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_drain_without_a_running_agent_says_so(loaders, tmp_path):
    conf = tmp_path / "healthd.json"
    conf.write_text(json.dumps({"state_file": str(tmp_path / "state.json"), "drain_file": str(tmp_path / "drain"),
                                "announcements": []}))
    ret = loaders.modules.anycastlb.drain(config=str(conf), timeout=1)
    assert ret["result"] is False and "not running" in ret["comment"]
    assert (tmp_path / "drain").exists()
