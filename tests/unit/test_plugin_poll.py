"""The poller: one run hands Icinga2 the same states and lines the per-check plugins print.

Recorded outputs from tests/unit/test_plugins.py (HAProxy 2.6 ``/;csv``, BIRD 2.0.12 ``show
route all`` / ``show protocols all`` of the listener) served by a local HTTP server and a
stand-in ``birdc``; the results go through a real FIFO, as to Icinga2's command pipe.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import threading
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.plugins import check_anycastlb_bird as bird
from anycastlb.plugins import check_anycastlb_haproxy as hap
from anycastlb.plugins import check_anycastlb_poll as poll
from anycastlb.render import icinga2

from test_plugins import HAPROXY_CSV, PROTOCOLS_ALL, ROUTE_ALL

SPEAKERS = ["lb1=198.51.100.21,2001:db8:100::21", "lb2=198.51.100.22,2001:db8:100::22",
            "lb3=198.51.100.23,2001:db8:100::23"]
LINE = re.compile(r"^\[(\d+)\] PROCESS_SERVICE_CHECK_RESULT;([^;]+);([^;]+);(\d);(.*)$")


@pytest.fixture
def stats_server(serve_text):
    """HAProxy's stats CSV on a loopback port: (port, paths requested)."""
    return serve_text(HAPROXY_CSV)


def fake_birdc(tmp_path: Path, delay: float = 0.0) -> str:
    """A birdc that answers ``show route all`` and ``show protocols all`` from the recordings
    (after ``delay`` seconds: a large table on a busy node)."""
    (tmp_path / "routes.txt").write_text(ROUTE_ALL)
    (tmp_path / "protocols.txt").write_text(PROTOCOLS_ALL)
    script = tmp_path / "birdc"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\nsleep {delay}\ncase "$*" in\n'
                      f'  *protocols*) cat {tmp_path}/protocols.txt;;\n  *) cat {tmp_path}/routes.txt;;\nesac\n')
    script.chmod(0o755)
    return str(script)


def spec(port: int, unreachable_port: int | None = None) -> dict:
    hosts = [{"node": "lb1", "address": "127.0.0.1", "port": port, "uri": "/;csv",
              "checks": [{"host": "lb1", "service": "frontend www-80 on lb1", "frontend": "www-80", "backend": "www-8080"},
                         {"host": "lb1", "service": "frontend imap-143 on lb1", "frontend": "imap-143",
                          "backend": "imap-143"}]}]
    if unreachable_port:
        hosts.append({"node": "lb2", "address": "127.0.0.1", "port": unreachable_port, "uri": "/;csv",
                      "checks": [{"host": "lb2", "service": "frontend www-80 on lb2", "frontend": "www-80",
                                  "backend": "www-8080"}]})
    return {"haproxy": hosts, "bird": {
        "socket": "/x/bird.ctl", "speakers": SPEAKERS,
        "announcers": [{"host": "vip-www", "service": "announcers www 192.0.2.10", "prefix": "192.0.2.10/32",
                        "expected": ["lb1", "lb2"]},
                       {"host": "vip-www", "service": "announcers www 2001:db8:1::10",
                        "prefix": "2001:db8:1::10/128", "expected": ["lb1", "lb2", "lb3"]},
                       {"host": "vip-gone", "service": "announcers gone 192.0.2.99", "prefix": "192.0.2.99/32",
                        "expected": ["lb1"]}],
        "rr_sessions": [{"host": "rr2", "service": "bgp sessions of rr2", "rr": "rr2",
                         "neighbors": ["198.51.100.12", "2001:db8:100::12"], "expected": ["lb1", "lb2"]}]}}


def read_fifo(path: Path, into: list[str]) -> threading.Thread:
    def reader() -> None:
        with open(path, encoding="utf-8") as fh:
            into.append(fh.read())
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t


def results(text: str) -> dict[tuple[str, str], tuple[int, str]]:
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, line
        out[(m.group(2), m.group(3))] = (int(m.group(4)), m.group(5))
    return out


def test_one_run_hands_in_what_each_plugin_would_print(tmp_path, stats_server, capsys):
    port, hits = stats_server
    birdc = fake_birdc(tmp_path)
    pipe = tmp_path / "anycastlb.cmd"
    os.mkfifo(pipe)
    got: list[str] = []
    reader = read_fifo(pipe, got)
    (tmp_path / "spec.json").write_text(json.dumps(spec(port)))
    assert poll.main(["--spec", str(tmp_path / "spec.json"), "--command-file", str(pipe), "--birdc", birdc]) == poll.OK
    reader.join(5)
    line = capsys.readouterr().out
    assert line.startswith("OK: 6 results handed to Icinga2 (2 OK, 4 CRITICAL)"), line
    assert hits == ["/;csv"], "one fetch for both frontends of lb1"
    assert sorted((tmp_path / "args").read_text().splitlines()) == [
        "-r -s /x/bird.ctl show protocols all", "-r -s /x/bird.ctl show route all"], "BIRD read once"
    res = results(got[0])

    # the same check through the single-check plugins: identical state and line
    for fe, be in (("www-80", "www-8080"), ("imap-143", "imap-143")):
        state = hap.main(["-H", "127.0.0.1", "-p", str(port), "--uri", "/;csv", "--frontend", fe, "--backend", be,
                          "--node", "lb1", "--cache-s", "0"])
        assert res[("lb1", f"frontend {fe} on lb1")] == (state, capsys.readouterr().out.strip())
    for prefix, expected in (("192.0.2.10/32", ["lb1", "lb2"]), ("2001:db8:1::10/128", ["lb1", "lb2", "lb3"])):
        (tmp_path / "routes.txt").write_text(ROUTE_ALL)   # what `show route PREFIX all` answers, and more
        argv = ["announcers", "--birdc", birdc, "--socket", "/x/bird.ctl", "--prefix", prefix]
        argv += [f"--node={s}" for s in SPEAKERS] + [f"--expected={e}" for e in expected]
        state = bird.main(argv)
        name = "announcers www " + prefix.split("/")[0]
        assert res[("vip-www", name)] == (state, capsys.readouterr().out.strip())
    argv = ["rr-sessions", "--birdc", birdc, "--rr", "rr2", "--neighbor", "198.51.100.12",
            "--neighbor", "2001:db8:100::12", "--expected", "lb1", "--expected", "lb2"]
    state = bird.main(argv + [f"--node={s}" for s in SPEAKERS])
    assert res[("rr2", "bgp sessions of rr2")] == (state, capsys.readouterr().out.strip())

    # and what a user reads
    assert res[("lb1", "frontend www-80 on lb1")][0] == poll.OK
    assert res[("lb1", "frontend imap-143 on lb1")][0] == poll.CRITICAL
    assert res[("vip-www", "announcers www 2001:db8:1::10")][0] == poll.CRITICAL   # lb3 is missing
    assert res[("vip-gone", "announcers gone 192.0.2.99")] == (
        poll.CRITICAL, "CRITICAL: 192.0.2.99/32 announced by 0 node(s): none (expected 1: lb1); missing: lb1 | "
                       "announcers=0;;1:;0 paths=0;;;0")
    assert res[("rr2", "bgp sessions of rr2")][0] == poll.CRITICAL


def test_unreadable_sources_are_the_checks_results(tmp_path, stats_server):
    port, _ = stats_server
    free = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    closed = free.server_port
    free.server_close()
    out = tmp_path / "cmd.txt"
    out.touch()
    state, line = poll.run(spec(port, unreachable_port=closed), str(out), birdc=str(tmp_path / "no-birdc"))
    assert state == poll.OK, line
    res = results(out.read_text())
    s, text = res[("lb2", "frontend www-80 on lb2")]
    assert s == poll.CRITICAL and text.startswith(f"CRITICAL: HAProxy stats at 127.0.0.1:{closed}/;csv unreadable")
    assert res[("lb1", "frontend www-80 on lb1")][0] == poll.OK, "one node down spoils no other node's checks"
    s, text = res[("vip-www", "announcers www 192.0.2.10")]
    assert s == poll.UNKNOWN and text.startswith("UNKNOWN: cannot read BIRD at /x/bird.ctl")


def test_poller_critical_when_icinga_does_not_read_the_pipe(tmp_path, stats_server):
    port, _ = stats_server
    pipe = tmp_path / "anycastlb.cmd"
    os.mkfifo(pipe)   # nobody reads it: Icinga2 is not running
    state, line = poll.run(spec(port), str(pipe), birdc=fake_birdc(tmp_path))
    assert state == poll.CRITICAL and "results not handed to Icinga2" in line
    state, line = poll.run(spec(port), str(tmp_path / "missing.cmd"), birdc=fake_birdc(tmp_path))
    assert state == poll.CRITICAL


def test_results_carry_the_time_their_sources_were_read(tmp_path, stats_server):
    """A slow run (BIRD's table at 1,000 services: about 10 s) hands in results stamped when it
    read, not when it finished: a check round forced while it ran must not take them for its own."""
    import time
    port, _hits = stats_server
    out = tmp_path / "cmd.txt"
    out.write_text("")
    before = int(time.time())
    state, line = poll.run(spec(port), str(out), birdc=fake_birdc(tmp_path, delay=2.2))
    after = int(time.time())
    assert state == poll.OK, line
    stamps = {int(LINE.match(x).group(1)) for x in out.read_text().splitlines()}
    assert after - before >= 2
    assert stamps and all(before <= s <= before + 1 for s in stamps), (before, after, stamps)


def test_a_name_the_command_syntax_cannot_carry_is_refused():
    with pytest.raises(ValueError):
        poll.command_lines([("lb1", "frontend a;b", 0, "OK")], 0)
    assert poll.command_lines([("lb1", "x", 2, "CRITICAL: a\nb | p=1")], 7) == (
        "[7] PROCESS_SERVICE_CHECK_RESULT;lb1;x;2;CRITICAL: a b | p=1\n")


def test_rendered_spec_holds_every_passive_check_once_per_lb_node(campus_catalog):
    mon = compile_catalog(campus_catalog).nodes["mon1"]
    files = {f.path: f.content for f in icinga2.render(mon, {}, "/")}
    spec = json.loads(files[icinga2.POLL_SPEC])
    checks = mon["monitoring"]["checks"]
    fronts = [c["name"] for c in checks if c["type"] == "haproxy-frontend"]
    assert sorted(c["service"] for h in spec["haproxy"] for c in h["checks"]) == sorted(fronts)
    assert [h["node"] for h in spec["haproxy"]] == ["lb1", "lb2", "lb3"], "one fetch per LB node"
    assert {h["uri"] for h in spec["haproxy"]} == {"/;csv"}
    assert sorted(c["service"] for c in spec["bird"]["announcers"]) == sorted(
        c["name"] for c in checks if c["type"] == "announcers")
    assert [c["rr"] for c in spec["bird"]["rr_sessions"]] == ["rr1", "rr2"]
    services = files[f"{icinga2.OURS}/services.conf"]
    body = re.search(r'^object Service "frontend www-80 on lb1" \{\n(.*?)^\}', services, re.M | re.S).group(1)
    assert 'import "anycastlb-passive"' in body, "Icinga2 does not schedule it; the poller hands its result in"
    body = re.search(r'^object Service "backend www web1:8080" \{\n(.*?)^\}', services, re.M | re.S).group(1)
    assert 'import "anycastlb-passive"' in body, "its check_http is a probe of the poller now"
    assert 'check_command = "http"' in body, "check now still runs check_http"
    active = re.findall(r'^object Service "([^"]+)" \{\n  import "anycastlb-service"', services, re.M)
    assert active == ["anycastlb poller"], "on the campus, the poller is the only process per interval"
    poller = re.search(r'^object Service "anycastlb poller" \{\n(.*?)^\}', services, re.M | re.S).group(1)
    assert 'host_name = "mon1"' in poller and 'check_command = "anycastlb-poll"' in poller
    base = files[f"{icinga2.OURS}/00-base.conf"]
    assert f'command_path = "{icinga2.COMMAND_PIPE}"' in base and "enable_active_checks = false" in base
