"""ServiceControl: command construction, reload confirmation parsing, VIPs on lo.

There is no systemd on these machines: the systemd mode is tested by the
commands it would run (a fake runner records them), not by running them.
Real start/reload in direct mode is exercised by tests/integration/test_traffic_netns.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb.compiler import compile_catalog
from anycastlb.render import daemon
from anycastlb.render_cli import throwaway_certificates
from anycastlb.service import (
    SERVICES,
    Service,
    ServiceControl,
    ServiceError,
    config_facts,
    bird_configure_ok,
    detect_mode,
    foreign_listeners,
    parse_show_proc,
    register_service,
    sync_vips,
    vip_plan,
    without_servers,
)


class FakeRun:
    """Records argv lists; answers with canned results (first matching prefix wins)."""

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        line = " ".join(argv)
        for key, (rc, out) in self.answers.items():
            if key in line:
                return subprocess.CompletedProcess(argv, rc, out, "")
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_mode_detection_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYCASTLB_SERVICE_MODE", "systemd")
    assert detect_mode() == "systemd"
    assert detect_mode("direct") == "direct"
    with pytest.raises(ServiceError):
        detect_mode("upstart")


def test_systemd_commands() -> None:
    run = FakeRun({"is-active --quiet": (3, ""), "is-active haproxy": (3, ""), "MainPID": (0, "4242\n"),
                   "anycastlb_prev": (1, "Error: Could not process rule: No such file or directory")})
    ctl = ServiceControl("systemd", run=run)
    assert ctl.running("haproxy") is False
    ctl.reload_or_start("haproxy")  # not running: started
    ctl.start("healthd")
    assert ctl.pid("haproxy") == 4242
    nft = ["nft", "delete table inet anycastlb_prev"] if shutil.which("nft") else None
    assert [c for c in run.calls if c != nft] == [["systemctl", "is-active", "haproxy", "--quiet"],
                         ["systemctl", "is-active", "haproxy", "--quiet"],
                         ["systemctl", "start", "haproxy"],
                         ["systemctl", "start", "anycastlb-healthd"],
                         ["systemctl", "show", "-p", "MainPID", "--value", "haproxy"]]


@pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed")
def test_haproxy_started_drops_the_pools_chain_kept_from_before_the_nftables_load() -> None:
    run = FakeRun({"is-active": (3, "")})
    out = ServiceControl("systemd", run=run).reload_or_start("haproxy")
    assert out.endswith("; previous pools chain dropped")
    assert run.calls[-1] == ["nft", "delete table inet anycastlb_prev"]


def test_systemd_reloads_a_running_unit_and_confirms_bird_by_its_output() -> None:
    run = FakeRun({"birdc": (0, "Reading configuration from /etc/bird/bird.conf\nReconfigured")})
    ctl = ServiceControl("systemd", run=run)
    assert ctl.reload_or_start("healthd") == "healthd reloaded (systemctl reload anycastlb-healthd)"
    assert run.calls[-1] == ["systemctl", "reload", "anycastlb-healthd"]
    # `systemctl reload bird` exits 0 on a refused config: the unit's own ExecReload is run and read.
    assert ctl.reload_or_start("bird") == "bird reconfigured"
    assert run.calls[-1] == ["birdc", "-s", "/run/bird/bird.ctl", "configure"]
    refused = ServiceControl("systemd", run=FakeRun({"birdc": (0, "bird.conf:3:1 syntax error")}))
    with pytest.raises(ServiceError, match="refused"):
        refused.reload_or_start("bird")


def test_systemd_failure_is_a_service_error() -> None:
    ctl = ServiceControl("systemd", run=FakeRun({"is-active": (3, ""), "start": (1, "Job failed")}))
    with pytest.raises(ServiceError, match="Job failed"):
        ctl.reload_or_start("haproxy")


def test_systemd_mode_uses_the_debian_units_paths() -> None:
    from anycastlb import paths
    ctl = ServiceControl("systemd", run=FakeRun())
    assert ctl.paths is paths.SYSTEMD
    assert (ctl.paths.haproxy_pidfile, ctl.paths.haproxy_master_socket) == ("/run/haproxy.pid",
                                                                            "/run/haproxy-master.sock")
    assert ServiceControl("direct").paths is paths.DIRECT


def test_direct_argv_with_root_and_netns_prefix() -> None:
    ctl = ServiceControl("direct", root="/srv/n1", prefix=["ip", "netns", "exec", "n1"])
    assert ctl.argv("haproxy") == ["ip", "netns", "exec", "n1", "haproxy", "-W", "-D", "-f",
                                   "/srv/n1/etc/haproxy/haproxy.cfg", "-p", "/srv/n1/run/haproxy/haproxy.pid",
                                   "-S", "/srv/n1/run/haproxy/master.sock"]
    assert ctl.argv("bird")[4:] == ["bird", "-c", "/srv/n1/etc/bird/bird.conf", "-s", "/srv/n1/run/bird/bird.ctl",
                                    "-P", "/srv/n1/run/bird/bird.pid", "-g", "bird"]
    assert ctl.argv("healthd")[-2:] == ["--config", "/srv/n1/etc/anycastlb/healthd.json"]
    assert ServiceControl("direct").argv("bird")[:3] == ["bird", "-c", "/etc/bird/bird.conf"]


def test_unknown_daemon_and_registration() -> None:
    ctl = ServiceControl("systemd", run=FakeRun())
    with pytest.raises(ServiceError, match="unknown daemon"):
        ctl.start("sendmail")
    register_service(Service(name="exampled", unit="example", command=("exampled",), pidfile="/run/ex.pid"))
    try:
        ctl.start("exampled")
        assert ctl._run.calls[-1] == ["systemctl", "start", "example"]  # type: ignore[attr-defined]
    finally:
        del SERVICES["exampled"]


def test_direct_running_reads_the_pidfile(tmp_path: Path) -> None:
    ctl = ServiceControl("direct", root=str(tmp_path))
    assert ctl.running("bird") is False
    (tmp_path / "run/bird").mkdir(parents=True)
    (tmp_path / "run/bird/bird.pid").write_text("999999999\n")
    assert ctl.running("bird") is False
    import os
    (tmp_path / "run/bird/bird.pid").write_text(f"{os.getpid()}\n")
    assert ctl.running("bird") is True


# Real HAProxy 2.6.12 master CLI answers (captured in a network namespace).
SHOW_PROC_OK = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
32615           master          1 [failed: 0]   0d00h00m05s     2.6.12-1+deb12u4
# workers
32694           worker          0               0d00h00m00s     2.6.12-1+deb12u4
# old workers
32616           worker          1               0d00h00m05s     2.6.12-1+deb12u4
# programs

"""
SHOW_PROC_FAILED = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
32615           master          2 [failed: 1]   0d00h00m06s     2.6.12-1+deb12u4
# workers
32694           worker          1               0d00h00m01s     2.6.12-1+deb12u4
# programs

"""


def test_parse_show_proc() -> None:
    ok = parse_show_proc(SHOW_PROC_OK)
    assert (ok.master_pid, ok.reloads, ok.failed) == (32615, 1, 0)
    assert ok.workers == ((32694, 0),) and ok.old_workers == (32616,)
    failed = parse_show_proc(SHOW_PROC_FAILED)
    assert (failed.reloads, failed.failed, failed.workers) == (2, 1, ((32694, 1),))
    with pytest.raises(ValueError):
        parse_show_proc("Unknown command.\n")


@pytest.mark.parametrize("output,ok", [
    ("BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured", True),
    ("BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfiguration in progress", True),
    ("BIRD 2.0.12 ready.\nNothing to do", True),
    ("BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\n/etc/bird/bird.conf:3:1 syntax error", False),
    ("Unable to connect to server control socket (/run/bird/bird.ctl): No such file or directory", False),
])
def test_birdc_configure_output_decides(output: str, ok: bool) -> None:
    assert bird_configure_ok(output) is ok


def test_birdc_refusal_raises_even_with_exit_0(tmp_path: Path) -> None:
    import os
    (tmp_path / "run/bird").mkdir(parents=True)
    (tmp_path / "run/bird/bird.pid").write_text(f"{os.getpid()}\n")
    run = FakeRun({"configure": (0, "BIRD 2.0.12 ready.\nbird.conf:3:1 syntax error, unexpected CF_SYM_UNDEFINED")})
    ctl = ServiceControl("direct", root=str(tmp_path), run=run)
    with pytest.raises(ServiceError, match="syntax error"):
        ctl.reload_or_start("bird")
    assert run.calls == [["birdc", "-s", f"{tmp_path}/run/bird/bird.ctl", "configure"]]


def test_preflight_finds_a_foreign_listener_on_a_bind() -> None:
    binds = config_facts("    bind 192.0.2.10:80,[2001:db8:1::10]:80 transparent\n"
                         "    bind [2001:db8:1::10]:443 transparent ssl\n    bind 192.0.2.10:8443 transparent\n").binds
    assert binds == {("192.0.2.10", 80), ("2001:db8:1::10", 80), ("2001:db8:1::10", 443), ("192.0.2.10", 8443)}
    ss = ('LISTEN 0 5 192.0.2.10:8443 0.0.0.0:* users:(("python3",pid=7,fd=3))\n'
          'LISTEN 0 4096 192.0.2.10:80 0.0.0.0:* users:(("haproxy",pid=8,fd=5))\n'
          'LISTEN 0 4096 [::]:443 [::]:* users:(("nginx",pid=9,fd=6))\n')
    found = foreign_listeners(ss, binds)
    assert sorted((a, p) for a, p, _ in found) == [("192.0.2.10", 8443), ("2001:db8:1::10", 443)]


def test_preflight_looks_up_only_binds_the_running_master_does_not_hold(tmp_path: Path) -> None:
    (tmp_path / "etc/haproxy").mkdir(parents=True)
    (tmp_path / "run/haproxy").mkdir(parents=True)
    cfg = config_facts("    bind 192.0.2.10:80,[2001:db8:1::10]:80 transparent\n    bind 192.0.2.10:8443 transparent\n")
    ss = 'LISTEN 0 5 0.0.0.0:8443 0.0.0.0:* users:(("python3",pid=7,fd=3))\n'
    run = FakeRun({"ss -Htlnp": (0, ss)})
    ctl = ServiceControl("direct", root=str(tmp_path), run=run)
    running = parse_show_proc(SHOW_PROC_OK)
    with pytest.raises(ServiceError, match="192.0.2.10:8443 is already in use by"):   # nothing on record
        ctl._haproxy_preflight(running, cfg)
    # this master's generation loaded the same bind lines (anycastlb's last confirmed reload): nothing is
    # looked up; the lines are recorded as written, in any order
    ctl._record_binds(running, ["192.0.2.10:8443", "192.0.2.10:80,[2001:db8:1::10]:80"])
    run.calls.clear()
    assert ctl._haproxy_preflight(running, cfg) == cfg.bind_lines and run.calls == []
    # the same addresses on other lines: compared address by address, still nothing to look up
    ctl._record_binds(running, ["192.0.2.10:80", "[2001:db8:1::10]:80,192.0.2.10:8443"])
    assert ctl._haproxy_preflight(running, cfg) == cfg.bind_lines and run.calls == []
    # another generation (a reload or restart by someone else): the record is void
    other = parse_show_proc(SHOW_PROC_FAILED)
    with pytest.raises(ServiceError, match="8443"):
        ctl._haproxy_preflight(other, cfg)
    # only a new bind is looked up: a listener on a bind the master holds is not the reload's concern
    ctl._record_binds(running, ["192.0.2.10:8443,[2001:db8:1::10]:80"])
    run.answers["ss -Htlnp"] = (0, ss + 'LISTEN 0 5 [::]:80 [::]:* users:(("nginx",pid=9,fd=6))\n')
    with pytest.raises(ServiceError, match=r"192\.0\.2\.10:80 is already in use by .*nginx"):
        ctl._haproxy_preflight(running, cfg)
    # a record in the format of an earlier anycastlb (addresses, not lines) counts as none
    (tmp_path / "run/haproxy/anycastlb-binds.json").write_text(
        json.dumps({"master": running.master_pid, "reloads": running.reloads, "binds": [["192.0.2.10", 80]]}))
    with pytest.raises(ServiceError, match="8443"):
        ctl._haproxy_preflight(running, cfg)


def test_config_facts_reads_binds_and_tracking_servers_in_one_pass(campus_catalog: Path, tmp_path: Path) -> None:
    """The one-pass reader agrees with HAProxy's own reading of what anycastlb renders: every bind
    line (frontends, stats, pooled lists), and only the servers whose line says ``track``."""
    cfg = ("global\n    stats socket /run/haproxy/admin.sock mode 660 level admin\n"
           "frontend f\n    bind 192.0.2.10:80,[2001:db8:1::10]:80 transparent\n\tbind :8404\n"
           "    bind-process 1\n"
           "backend chk-1\n    server 203.0.113.25:143 203.0.113.25:143 check\n"
           "backend b # a comment\n    server track 203.0.113.26:143 check\n"
           "    server s1 203.0.113.25:143 track chk-1/203.0.113.25:143 weight 100\n"
           "    server bind1 203.0.113.25:143 track chk-1/203.0.113.25:143 weight 100\n"
           "server top 203.0.113.9:1 track chk-1/x\n")
    facts = config_facts(cfg)
    assert facts.bind_lines == ("192.0.2.10:80,[2001:db8:1::10]:80", ":8404")
    assert facts.binds == {("192.0.2.10", 80), ("2001:db8:1::10", 80), ("*", 8404)}
    assert facts.tracking == {("b", "s1"), ("b", "bind1")}   # not a server named track, not outside a section
    # the pooled 1,000-service shape: what the regular expressions of before found, this finds
    data = yaml.safe_load(campus_catalog.read_text())
    data["clusters"]["edge"]["frontends"] = "pooled"
    data["nodes"]["lb1"]["firewall"] = "unmanaged"   # its pools bind each VIP (no nftables hand-over)
    for i in range(4):   # two services in front of the same mail hosts: a shared, tracked check
        data["services"][f"mx{i}"] = {"mode": "tcp", "vip": f"192.0.2.{200 + i}", "cluster": "edge", "ports": [143],
                                      "check": {"tcp": {}},
                                      "backends": {"mail1": {"address": "203.0.113.25"},
                                                   "mail2": {"address": "203.0.113.26", "backup": True}}}
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lb1 = compile_catalog(path).nodes["lb1"]
    certs = throwaway_certificates(lb1["haproxy"]["certificates"])
    [text] = [f.content for f in daemon("haproxy").render(lb1, {"certificates": certs, "bgp_passwords": {}}, "/")
              if f.path.endswith("haproxy.cfg")]
    facts = config_facts(text)
    binds = set()
    for m in re.finditer(r"^\s*bind\s+(\S+)", text, re.M):
        for one in m.group(1).split(","):
            a = re.fullmatch(r"(?:\[([^\]]+)\]|([^\[\]]*?)):(\d+)", one)
            assert a
            binds.add((a.group(1) or a.group(2) or "*", int(a.group(3))))
    tracking, backend = set(), ""
    for m in re.finditer(r"^(?:backend\s+(\S+)|\s+server\s+(\S+)\s.*\strack\s.*)$", text, re.M):
        backend = m.group(1) or backend
        if m.group(2):
            tracking.add((backend, m.group(2)))
    assert facts.binds == binds and len(binds) > 10
    assert facts.tracking == tracking and len(tracking) >= 8


# ------------------------------------------------------------------ VIPs on lo


@pytest.fixture(scope="module")
def fleet(campus_catalog: Path) -> dict[str, dict[str, Any]]:
    return compile_catalog(campus_catalog).nodes


def test_vip_plan_adds_missing_and_removes_only_stale_pool_addresses(fleet: dict[str, Any]) -> None:
    present = ["127.0.0.1/8", "::1/128", "192.0.2.10/32", "192.0.2.99/32", "192.0.2.0/24", "203.0.113.5/32",
               "2001:db8:1::77/128"]
    add, remove = vip_plan(fleet["lb3"], present)  # drained, yet its VIPs stay on lo
    assert add == ["192.0.2.11/32", "192.0.2.20/32", "2001:db8:1::10/128"]
    assert remove == ["192.0.2.99/32", "2001:db8:1::77/128"]  # never 127/8, a /24, nor outside the pools


def test_sync_vips_runs_ip_addr_replace_and_del(fleet: dict[str, Any]) -> None:
    lo = [{"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8},
                                          {"local": "192.0.2.88", "prefixlen": 32},
                                          {"local": "192.0.2.50", "prefixlen": 32}]}]
    run = FakeRun({"addr show": (0, json.dumps(lo))})
    changes = sync_vips(fleet["kdc1"], run=run, prefix=["ip", "netns", "exec", "x"])
    assert changes == {"vips": {"added": ["2001:db8:1::88/128"], "removed": ["192.0.2.50/32"]}}
    assert run.calls[1:] == [["ip", "netns", "exec", "x", "ip", "addr", "replace", "2001:db8:1::88/128", "dev", "lo"],
                             ["ip", "netns", "exec", "x", "ip", "addr", "del", "192.0.2.50/32", "dev", "lo"]]
    test_run = FakeRun({"addr show": (0, json.dumps(lo))})
    assert sync_vips(fleet["kdc1"], test=True, run=test_run)["vips"]["added"] == ["2001:db8:1::88/128"]
    assert len(test_run.calls) == 1  # test mode only looked


def test_converge_is_the_healthd_step_only(fleet: dict[str, Any]) -> None:
    run = FakeRun({"addr show": (0, "[]")})
    ctl = ServiceControl("direct", run=run)
    assert ctl.converge("haproxy", fleet["lb1"]) == {}
    assert run.calls == []
    assert ctl.converge("healthd", fleet["lb1"])["vips"]["added"][0] == "192.0.2.10/32"


def test_the_state_file_leaves_out_tracking_servers() -> None:
    """A tracking server's saved state would override the check it tracks: its line is left out."""
    cfg = ("backend chk-1a2b3c4d\n    server 203.0.113.25:143 203.0.113.25:143 check\n"
           "backend imap-a-143\n    server mail1 203.0.113.25:143 track chk-1a2b3c4d/203.0.113.25:143 weight 100\n"
           "    server mail3 203.0.113.27:143 check weight 100\n"
           "backend imap-b-143\n    server m1 203.0.113.25:143 track chk-1a2b3c4d/203.0.113.25:143 weight 50\n")
    tracking = config_facts(cfg).tracking
    assert tracking == {("imap-a-143", "mail1"), ("imap-b-143", "m1")}
    state = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n"
             "3 chk-1a2b3c4d 1 203.0.113.25:143 203.0.113.25 0\n4 imap-a-143 1 mail1 203.0.113.25 0\n"
             "4 imap-a-143 2 mail3 203.0.113.27 2\n5 imap-b-143 1 m1 203.0.113.25 2\n")
    assert without_servers(state, tracking) == ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n"
                                                "3 chk-1a2b3c4d 1 203.0.113.25:143 203.0.113.25 0\n"
                                                "4 imap-a-143 2 mail3 203.0.113.27 2\n")
