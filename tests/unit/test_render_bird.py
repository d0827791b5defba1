"""BIRD and healthd renderers: what a user expects for the campus catalog, and the real checkers."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import apply_daemon, check_node
from anycastlb.compiler import compile_catalog
from anycastlb.healthd import parse_config
from anycastlb.render import RenderError
from anycastlb.render import bird, healthd

needs_bird = pytest.mark.skipif(not shutil.which("bird"), reason="bird is not installed")


@pytest.fixture(scope="module")
def fleet(campus_catalog: Path) -> dict[str, dict[str, Any]]:
    return compile_catalog(campus_catalog).nodes


def conf(model: dict[str, Any], secrets: dict[str, Any] | None = None) -> str:
    return bird.render(model, secrets or {"certificates": {}, "bgp_passwords": {}}, "/")[0].content


def protocol(text: str, name: str) -> str:
    """The body of ``protocol bgp <name> ...`` up to its closing brace at column 0."""
    m = re.search(rf"^protocol bgp {re.escape(name)} .*?^}}", text, re.S | re.M)
    assert m, f"no protocol {name}"
    return m.group(0)


def test_speaker_exports_its_healthy_vips_only(fleet: dict[str, Any]) -> None:
    text = conf(fleet["lb1"])
    assert text.startswith("# managed by anycastlb")
    assert "router id 198.51.100.21;" in text
    assert "define ANNOUNCE4 = [ 192.0.2.10/32, 192.0.2.11/32, 192.0.2.20/32 ];" in text
    assert "define ANNOUNCE6 = [ 2001:db8:1::10/128 ];" in text
    # The health agent's table is learned (the healthd contract).
    assert "kernel table 4242;" in text and "import where krt_source = 252;" in text
    # ... and a burst of healthd's changes is neither dropped by netlink nor left for a minute
    for name in ("healthd4", "healthd6"):
        body = re.search(rf"^protocol kernel {name} {{.*?^}}", text, re.S | re.M)
        assert body and "netlink rx buffer 8388608;" in body.group(0) and "scan time 10;" in body.group(0)
    s4 = protocol(text, "rout_rr1_4")
    assert "local 198.51.100.21 as 64512;" in s4
    assert "neighbor 198.51.100.11 as 64512;" in s4
    assert "direct;" in s4 and "bfd on;" in s4
    assert 'export where proto = "healthd4" && net ~ ANNOUNCE4 && net ~ VIP_POOLS4;' in s4
    assert "import none;" in s4 and "next hop self;" in s4
    s6 = protocol(text, "rout_rr2_6")
    assert 'export where proto = "healthd6" && net ~ ANNOUNCE6 && net ~ VIP_POOLS6;' in s6


def test_drained_lb3_exports_nothing_but_keeps_its_sessions(fleet: dict[str, Any]) -> None:
    text = conf(fleet["lb3"])
    assert "ANNOUNCE" not in text
    for name in ("rout_rr1_4", "rout_rr1_6", "rout_rr2_4", "rout_rr2_6"):
        body = protocol(text, name)
        assert "export none;" in body
        assert "export where" not in body


def test_timers_and_bfd(fleet: dict[str, Any]) -> None:
    text = conf(fleet["lb1"])
    assert re.search(r"protocol bfd \{\s+interface \"\*\" \{\s+interval 100 ms;\s+multiplier 3;", text)
    assert "hold time 6;" in text
    assert "connect delay time 1;" in text and "error wait time 1, 30;" in text


def test_route_reflector_filters_clients_to_vip_pools(fleet: dict[str, Any]) -> None:
    text = conf(fleet["rr1"])
    assert "define VIP_POOLS4 = [ 192.0.2.0/24{32,32} ];" in text
    assert "define VIP_POOLS6 = [ 2001:db8:1::/64{128,128} ];" in text
    for client in ("clie_lb1_4", "clie_lb3_4", "clie_kdc1_4"):
        body = protocol(text, client)
        assert "rr client;" in body
        assert "import where net ~ VIP_POOLS4;" in body
        assert "export none;" in body
    assert "import where net ~ VIP_POOLS6;" in protocol(text, "clie_lb1_6")
    assert "protocol kernel" not in text  # nothing into the RR's own kernel
    assert not re.search(r"protocol bgp rr\b", text)  # 'rr' is a BIRD keyword


def test_route_reflector_hands_every_path_to_peers_and_listeners(fleet: dict[str, Any]) -> None:
    text = conf(fleet["rr1"])
    peer = protocol(text, "peer_core1_4")
    assert "neighbor 198.51.100.1 as 64500;" in peer
    assert "add paths tx;" in peer and "next hop keep;" in peer
    assert "export where net ~ VIP_POOLS4;" in peer and "import none;" in peer
    listener = protocol(text, "list_mon1_6")
    assert "add paths tx;" in listener and "export where net ~ VIP_POOLS6;" in listener
    assert "rr client;" not in listener


def test_listener_keeps_every_path_in_bird_only(fleet: dict[str, Any]) -> None:
    text = conf(fleet["mon1"])
    body = protocol(text, "rout_rr2_4")
    assert "add paths rx;" in body
    assert "import where net ~ VIP_POOLS4;" in body and "export none;" in body
    assert "protocol kernel" not in text


def test_password_from_secrets_and_file_mode(fleet: dict[str, Any]) -> None:
    model = copy.deepcopy(fleet["lb1"])
    for nb in model["bgp"]["neighbors"]:
        nb["password"] = "fleet"
    f = bird.render(model, {"certificates": {}, "bgp_passwords": {"fleet": "se'c\\ret #1"}}, "/")[0]
    assert 'password "se\'c\\ret #1";' in f.content  # BIRD strings have no escapes: kept as written
    assert (f.mode, f.group, f.secret) == (0o640, "bird", True)  # Debian's unit runs bird -u bird -g bird
    with pytest.raises(RenderError, match="double quote"):  # which BIRD cannot carry
        bird.render(model, {"certificates": {}, "bgp_passwords": {"fleet": 'se"cret'}}, "/")
    with pytest.raises(RenderError, match="fleet"):
        bird.render(model, {"certificates": {}, "bgp_passwords": {}}, "/")


@needs_bird
@pytest.mark.parametrize("node", ["lb1", "lb2", "lb3", "kdc1", "kdc2", "rr1", "rr2", "mon1"])
def test_real_bird_accepts_every_bgp_node(fleet: dict[str, Any], node: str) -> None:
    assert fleet[node]["bgp"] is not None
    results = check_node(fleet[node], {"certificates": {}, "bgp_passwords": {}})
    ok, output = results["bird"]
    assert ok, output


def test_nodes_without_bgp_run_no_bird(fleet: dict[str, Any]) -> None:
    assert sorted(n for n, m in fleet.items() if bird.SPEC.wanted(m)) == [
        "kdc1", "kdc2", "lb1", "lb2", "lb3", "mon1", "rr1", "rr2"]


@needs_bird
def test_apply_refuses_a_config_bird_rejects(tmp_path: Path, fleet: dict[str, Any]) -> None:
    class Recorder:
        """Records calls; runs nothing."""

        def __init__(self) -> None:
            self.calls: list[str] = []

        def running(self, name: str) -> bool:
            return True

        def reload_or_start(self, name: str) -> str:
            self.calls.append(name)
            return "reloaded"

    rec = Recorder()
    assert apply_daemon("bird", fleet["rr1"], root=str(tmp_path), control=rec).result is True
    assert rec.calls == ["bird"]
    live = tmp_path / "etc/bird/bird.conf"
    before = live.read_bytes()
    bad = copy.deepcopy(fleet["rr1"])
    for nb in bad["bgp"]["neighbors"]:
        nb["ident"] = "same"  # two protocols of one name: BIRD refuses it
    res = apply_daemon("bird", bad, root=str(tmp_path), control=rec)
    assert res.result is False and "bird -p -c" in res.comment
    assert live.read_bytes() == before
    assert rec.calls == ["bird"]


# ------------------------------------------------------------------ healthd.json


def test_healthd_config_for_an_lb(fleet: dict[str, Any]) -> None:
    doc = json.loads(healthd.render(fleet["lb1"], {}, "/")[0].content)
    assert doc["table"] == bird.HEALTH_TABLE and doc["proto"] == bird.HEALTH_PROTO
    by_prefix = {a["prefix"]: a for a in doc["announcements"]}
    assert sorted(by_prefix) == ["192.0.2.10/32", "192.0.2.11/32", "192.0.2.20/32", "2001:db8:1::10/128"]
    www = by_prefix["192.0.2.10/32"]
    assert www["service"] == "www"
    assert www["watch"] == {"type": "haproxy", "pidfile": "/run/haproxy/haproxy.pid",
                            "stats_socket": "/run/haproxy/admin.sock", "frontends": ["www-443", "www-80"],
                            "backends": ["www-8080"], "interval_ms": 100,
                            "events": "anycastlb-health", "reconcile_ms": 1000}
    parse_config(doc)  # healthd's own parser accepts it


def test_healthd_config_for_an_anycast_node(fleet: dict[str, Any]) -> None:
    doc = json.loads(healthd.render(fleet["kdc1"], {}, "/")[0].content)
    watch = doc["announcements"][0]["watch"]
    assert watch == {"type": "tcp", "address": "192.0.2.88", "port": 88, "interval_ms": 2000,
                     "timeout_ms": 1000, "rise": 2, "fall": 3}
    parse_config(doc)


def test_drained_lb3_runs_healthd_with_nothing_to_announce(fleet: dict[str, Any]) -> None:
    assert healthd.wanted(fleet["lb3"])
    assert json.loads(healthd.render(fleet["lb3"], {}, "/")[0].content)["announcements"] == []
    assert not healthd.wanted(fleet["rr1"]) and not healthd.wanted(fleet["mon1"])


def test_healthd_checker_refuses_a_bad_watch(tmp_path: Path, fleet: dict[str, Any]) -> None:
    bad = copy.deepcopy(fleet["kdc1"])
    bad["health"]["announcements"][0]["watch"]["rise"] = 0
    res = apply_daemon("healthd", bad, root=str(tmp_path))
    assert res.result is False and "rise" in res.comment
    assert not (tmp_path / "etc/anycastlb/healthd.json").exists()


@needs_bird
def test_a_config_with_passwords_is_written_0640_root_bird(tmp_path: Path, fleet: dict[str, Any]) -> None:
    import grp
    import os
    model = copy.deepcopy(fleet["lb1"])
    for nb in model["bgp"]["neighbors"]:
        nb["password"] = "fleet"
    secrets = {"certificates": {}, "bgp_passwords": {"fleet": "s3cret"}}
    res = apply_daemon("bird", model, secrets, root=str(tmp_path), reload=False)
    assert res.result is True
    diff = res.changes["diff"]["/etc/bird/bird.conf"]
    assert 's3cret' not in diff and '+    password "**********";' in diff
    assert diff.startswith("# /etc/bird/bird.conf holds a secret")
    st = os.stat(tmp_path / "etc/bird/bird.conf")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, grp.getgrnam("bird").gr_gid)
    assert apply_daemon("bird", model, secrets, root=str(tmp_path), reload=False).changes == {}
