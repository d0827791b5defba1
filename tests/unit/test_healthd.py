"""Unit tests of the pure part of anycastlb-healthd (no network, no root)."""

from __future__ import annotations

import json

import pytest

from anycastlb.healthd import (
    AlwaysWatch,
    ConfigError,
    HaproxyWatch,
    RiseFall,
    TcpWatch,
    decide,
    haproxy_verdict,
    load_config,
    parse_config,
    parse_event,
    parse_ip_routes,
    parse_show_stat,
    plan_routes,
)

# Real answers of HAProxy 2.6.12 (Debian 12) to `show stat` on the stats socket,
# captured from a run with frontend www-80 and backend www-8080 (servers s1, s2).

STAT_UP = (  # s1 up, s2 refused: backend UP with 1 active server
    '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n'
    'www-80,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    'www-8080,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,1,1,11,0,,1,3,1,,0,,2,0,,0,L4OK,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer4 check passed,,2,3,4,,,,127.0.0.1:18080,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n'
    'www-8080,s2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,11,11,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,127.0.0.1:18081,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n'
    'www-8080,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,1,11,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    '\n'
)

STAT_DOWN = (  # both servers refused: backend DOWN
    '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n'
    'www-80,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    'www-8080,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,4,2,1,1,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,127.0.0.1:18080,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n'
    'www-8080,s2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,13,13,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,127.0.0.1:18081,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n'
    'www-8080,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,DOWN,0,0,0,,2,1,1,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    '\n'
)

STAT_PAUSED = (  # `disable frontend www-80`, then `show stat -1 3 -1`
    '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n'
    'www-80,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,PAUSED,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    'www-8080,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,DOWN,0,0,0,,2,1,1,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\n'
    '\n'
)

EXAMPLE = {
    "table": 4242,
    "state_file": "/run/anycastlb/healthd.state.json",
    "drain_file": "/var/lib/anycastlb/drain",
    "announcements": [
        {"prefix": "192.0.2.10/32", "service": "www",
         "watch": {"type": "haproxy", "pidfile": "/run/haproxy/haproxy.pid", "stats_socket": "/run/haproxy/admin.sock",
                   "frontends": ["www-80", "www-443"], "backends": ["www-8080"], "interval_ms": 100}},
        {"prefix": "192.0.2.88/32", "service": "kdc",
         "watch": {"type": "tcp", "address": "192.0.2.88", "port": 88, "interval_ms": 2000, "timeout_ms": 1000,
                   "rise": 2, "fall": 3}},
    ],
}


def with_watch(watch: dict, prefix: str = "2001:db8::10/128") -> dict:
    return {"announcements": [{"prefix": prefix, "service": "svc", "watch": watch}]}


# ------------------------------------------------------------------ config


def test_brief_example_parses_with_its_values() -> None:
    cfg = parse_config(EXAMPLE)
    www, kdc = cfg.announcements
    assert cfg.table == 4242 and cfg.proto == 252
    assert www.watch == HaproxyWatch("/run/haproxy/haproxy.pid", "/run/haproxy/admin.sock",
                                     ("www-80", "www-443"), ("www-8080",), interval_ms=100)
    assert kdc.watch == TcpWatch("192.0.2.88", 88, 2000, 1000, rise=2, fall=3)


def test_probe_watch_may_follow_a_pidfile() -> None:
    cfg = parse_config(with_watch({"type": "tcp", "address": "192.0.2.88", "port": 88, "pidfile": "/run/krb5kdc.pid"}))
    assert cfg.announcements[0].watch == TcpWatch("192.0.2.88", 88, pidfile="/run/krb5kdc.pid")
    with pytest.raises(ConfigError, match="watch.pidfile: required for a haproxy watch"):
        parse_config(with_watch({"type": "haproxy", "stats_socket": "/run/haproxy/admin.sock"}))


def test_defaults_and_normalised_prefix() -> None:
    cfg = parse_config({"announcements": [{"prefix": "2001:DB8:0::10/128", "service": "x", "watch": {"type": "always"}}]})
    assert cfg.announcements[0].prefix == "2001:db8::10/128"
    assert cfg.announcements[0].watch == AlwaysWatch()
    assert (cfg.table, cfg.state_file, cfg.drain_file) == (4242, "/run/anycastlb/healthd.state.json",
                                                          "/var/lib/anycastlb/drain")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "top level must be a JSON object"),
        ({}, "announcements: required"),
        ({"announcements": [], "tabel": 1}, "unknown key(s) 'tabel'"),
        ({"announcements": [], "table": 254}, "system table"),
        ({"announcements": [], "table": "4242"}, "table: must be an integer"),
        ({"announcements": [], "proto": 12}, "belongs to the kernel, boot or BIRD"),
        ({"announcements": [{"prefix": "192.0.2.10/24", "service": "a", "watch": {"type": "always"}}]},
         "announcements[0].prefix: 192.0.2.10/24 has host bits set"),
        ({"announcements": [{"prefix": "192.0.2.10/32", "watch": {"type": "always"}}]},
         "announcements[0].service: required"),
        ({"announcements": [{"prefix": "192.0.2.10/32", "service": "a", "watch": {"type": "always"}},
                            {"prefix": "192.0.2.10", "service": "b", "watch": {"type": "always"}}]},
         "announcements[1].prefix: 192.0.2.10/32 is already announced by announcements[0]"),
        (with_watch({"type": "ping"}), "watch.type: must be one of always, dns, haproxy, http, kerberos, tcp"),
        (with_watch({"type": "tcp", "address": "192.0.2.88"}), "watch.port: required for a tcp watch"),
        (with_watch({"type": "tcp", "address": "kdc.example", "port": 88}), "watch.address: not an IP address"),
        (with_watch({"type": "tcp", "address": "192.0.2.88", "port": 88, "fall": 0}), "watch.fall: must be an integer"),
        (with_watch({"type": "tcp", "address": "192.0.2.88", "port": 88, "path": "/"}), "unknown key(s) 'path'"),
        (with_watch({"type": "haproxy", "pidfile": "/p", "stats_socket": "/s", "frontends": "www-80"}),
         "watch.frontends: must be a list"),
        (with_watch({"type": "http", "address": "192.0.2.1", "port": 80, "path": "health"}), "must start with '/'"),
        (with_watch({"type": "http", "address": "192.0.2.1", "port": 80, "expect": True}), "watch.expect"),
        (with_watch({"type": "haproxy", "pidfile": "/p", "stats_socket": "/s", "events": "health -w;show stat"}),
         "watch.events: must be the name of an HAProxy ring"),
        (with_watch({"type": "haproxy", "pidfile": "/p", "stats_socket": "/s", "reconcile_ms": 0}),
         "watch.reconcile_ms: must be an integer"),
    ],
)
def test_config_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "healthd.json")
    assert message in str(err.value)
    assert str(err.value).startswith("healthd.json")


def test_load_config_reports_file_and_line(tmp_path) -> None:
    path = tmp_path / "healthd.json"
    path.write_text('{"table": 4242,\n "announcements": [,]}\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: invalid JSON"):
        load_config(str(path))
    path.write_text(json.dumps(EXAMPLE))
    assert len(load_config(str(path)).announcements) == 2
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.json"))


# --------------------------------------------------------------- rise/fall


def test_rise_needs_consecutive_successes() -> None:
    m = RiseFall(rise=2, fall=3)
    assert not m.observe(True) and not m.healthy
    assert not m.observe(False)  # a failure resets the rise count
    assert not m.observe(True) and not m.healthy
    assert m.observe(True) and m.healthy


def test_fall_needs_consecutive_failures() -> None:
    m = RiseFall(rise=2, fall=3, healthy=True)
    m.observe(False)
    m.observe(False)
    assert m.healthy
    assert m.describe("tcp 192.0.2.88:88: no answer in 1000 ms", False) == \
        "failing 2/3: tcp 192.0.2.88:88: no answer in 1000 ms"
    m.observe(True)  # a success resets the fall count
    m.observe(False)
    m.observe(False)
    assert m.healthy
    assert m.observe(False) and not m.healthy


def test_hard_failure_goes_down_at_once() -> None:
    m = RiseFall(rise=2, fall=3, healthy=True)
    assert m.observe(False, hard=True) and not m.healthy


def test_reason_while_rising() -> None:
    m = RiseFall(rise=3, fall=1)
    m.observe(True)
    assert m.describe("tcp ok", True) == "rising 1/3: tcp ok"
    assert m.describe("refused", False) == "refused"


# ------------------------------------------------------------ show stat


def test_show_stat_parses_real_haproxy_output() -> None:
    rows = parse_show_stat(STAT_UP)
    assert set(rows) == {("www-80", "FRONTEND"), ("www-8080", "s1"), ("www-8080", "s2"), ("www-8080", "BACKEND")}
    assert rows[("www-80", "FRONTEND")]["status"] == "OPEN"
    assert rows[("www-8080", "s2")]["status"] == "DOWN"
    assert rows[("www-8080", "BACKEND")]["act"] == "1"


def test_verdict_up_with_one_server_of_two() -> None:
    assert haproxy_verdict(parse_show_stat(STAT_UP), ["www-80"], ["www-8080"]) == (True, "haproxy serves")


def test_verdict_backend_down() -> None:
    ok, reason = haproxy_verdict(parse_show_stat(STAT_DOWN), ["www-80"], ["www-8080"])
    assert not ok and reason == "backend www-8080 is DOWN (0 servers up)"


def test_verdict_paused_frontend() -> None:
    ok, reason = haproxy_verdict(parse_show_stat(STAT_PAUSED), ["www-80"], [])
    assert not ok and reason == "frontend www-80 is PAUSED"


def test_verdict_missing_proxy() -> None:
    rows = parse_show_stat(STAT_UP)
    assert haproxy_verdict(rows, ["www-443"], []) == (False, "frontend www-443 not in haproxy")
    assert haproxy_verdict(rows, [], ["www-80"]) == (False, "backend www-80 not in haproxy")


def test_show_stat_refuses_non_csv_answers() -> None:
    with pytest.raises(ValueError, match="Permission denied"):
        parse_show_stat("Permission denied\n\n")
    with pytest.raises(ValueError, match="empty answer"):
        parse_show_stat("")


# ---------------------------------------------------------------- decision


def test_decide_follows_health() -> None:
    cfg = parse_config(EXAMPLE)
    d = decide(cfg, {"192.0.2.10/32": (True, "haproxy serves"), "192.0.2.88/32": (False, "connection refused")}, False)
    assert d["192.0.2.10/32"].announce and d["192.0.2.10/32"].reason == "haproxy serves"
    assert not d["192.0.2.88/32"].announce and d["192.0.2.88/32"].reason == "connection refused"


def test_drain_withdraws_everything_even_healthy() -> None:
    cfg = parse_config(EXAMPLE)
    d = decide(cfg, {"192.0.2.10/32": (True, "ok"), "192.0.2.88/32": (True, "ok")}, True)
    assert not any(x.announce for x in d.values())
    assert d["192.0.2.10/32"].reason == "drained (/var/lib/anycastlb/drain exists)"


def test_no_result_yet_is_not_announced() -> None:
    d = decide(parse_config(EXAMPLE), {}, False)
    assert not any(x.announce for x in d.values())


def test_plan_routes_deletes_stale_and_adds_wanted() -> None:
    lines = plan_routes({"192.0.2.10/32", "2001:db8::10/128"}, {"192.0.2.10/32", "192.0.2.99/32"}, 4242, 252)
    assert lines == ["route del 192.0.2.99/32 table 4242 proto 252",
                     "route replace 2001:db8::10/128 dev lo table 4242 proto 252"]
    assert plan_routes({"192.0.2.10/32"}, {"192.0.2.10/32"}, 4242, 252) == []


def test_parse_ip_routes_real_json() -> None:
    # `ip -j -4 route show table 4242 proto 252` and `-6` (iproute2 6.1), verbatim
    v4 = '[{"dst":"192.0.2.10","dev":"lo","scope":"link","flags":[]}]'
    v6 = '[{"dst":"2001:db8:1::10","dev":"lo","metric":1024,"flags":[],"pref":"medium"}]'
    assert parse_ip_routes(v4) == {"192.0.2.10/32"}
    assert parse_ip_routes(v6, v6=True) == {"2001:db8:1::10/128"}
    assert parse_ip_routes("") == set()


# ------------------------------------------------------------------ a slow stats socket


def _unix_server(path, answer):
    """A real Unix socket at ``path`` whose every connection gets ``answer(conn, command)`` in a
    thread (``command``: what the client sent first). Returns ``(server, path)``; close the server."""
    import socket
    import threading

    path = str(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            answer(conn, conn.recv(4096).decode())

    threading.Thread(target=serve, daemon=True).start()
    return server, path


def _stats_watcher(tmp_path, answer):
    """A HaproxyWatcher of one VIP on a real Unix stats socket whose every connection is
    handed to ``answer(conn)`` in a thread; a live process (this one) stands in for the
    master. Returns ``(watcher, server, socket path)``; close the server when done."""
    import os

    from anycastlb import healthd_main as hm
    from anycastlb.healthd import Announcement

    pidfile = tmp_path / "haproxy.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    server, sock_path = _unix_server(tmp_path / "admin.sock", lambda conn, _command: answer(conn))
    watch = HaproxyWatch(pidfile=str(pidfile), stats_socket=sock_path, frontends=("www-80",),
                         backends=("www-8080",), interval_ms=100, timeout_ms=100)
    return hm.HaproxyWatcher([Announcement("192.0.2.10/32", "www", watch)]), server, sock_path


def test_a_slow_stats_answer_keeps_the_last_verdict_for_the_grace_only(tmp_path, monkeypatch) -> None:
    """One late ``show stat`` answer must not withdraw every VIP of a loaded node; a silent
    socket still does once the grace is over. A real Unix socket serves real HAProxy output."""
    import asyncio
    import socket
    import threading

    from anycastlb import healthd_main as hm

    answering = threading.Event()
    answering.set()
    held: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        if answering.is_set():
            conn.sendall(STAT_UP.encode())
            conn.close()
        else:
            held.append(conn)  # never answers

    watcher, server, sock_path = _stats_watcher(tmp_path, answer)
    monkeypatch.setattr(hm, "STATS_GRACE_S", 0.6)  # the real grace is 3 s; same logic, a shorter test

    async def run() -> list:
        out = [await watcher.probe()]
        answering.clear()
        out.append(await watcher.probe())  # 0.1 s after the last answer: within the grace
        # that timeout stretched the poll to 1 s (0.1 s / STATS_DUTY), so the grace to 3 s
        assert watcher.budget() == (pytest.approx(0.4), pytest.approx(3.0))
        await asyncio.sleep(3.2)
        out.append(await watcher.probe())  # 3.3 s: beyond it
        watcher.pid.close()
        return out

    try:
        first, slow, silent = asyncio.run(run())
    finally:
        server.close()
        for c in held:
            c.close()
    assert first == [("192.0.2.10/32", True, "haproxy serves", False)]
    prefix, ok, reason, hard = slow[0]
    assert ok and "no answer in 100 ms" in reason and "last answer kept" in reason
    assert silent == [("192.0.2.10/32", False, f"stats socket {sock_path}: no answer in 400 ms", False)]


def test_slow_stats_answers_stretch_the_poll_and_the_timeout_not_the_verdict(tmp_path) -> None:
    """At 1,000 services ``show stat`` is ~600 KB and takes tens of ms: healthd must then poll
    less often (at most a tenth of the time asking) and wait longer than the watch's timeout
    before calling HAProxy silent, instead of withdrawing every VIP of a busy node. A fast
    HAProxy keeps the watch's interval. A real Unix socket serves real HAProxy output."""
    import asyncio
    import socket
    import time

    delay = [0.0]

    def answer(conn: socket.socket) -> None:
        with conn:
            time.sleep(delay[0])
            conn.sendall(STAT_UP.encode())

    watcher, server, _path = _stats_watcher(tmp_path, answer)

    async def run() -> list:
        seen = []
        for d in (0.0, 0.06, 0.15, 0.0):
            delay[0] = d
            verdict = await watcher.probe()
            seen.append((verdict[0][1], verdict[0][2], watcher.period(), watcher.budget()[0]))
        watcher.pid.close()
        return seen

    try:
        fast, slow, slower, fast_again = asyncio.run(run())
    finally:
        server.close()
    assert fast[:2] == (True, "haproxy serves") and 0.1 <= fast[2] < 0.3 and 0.1 <= fast[3] < 0.12
    assert slow[:2] == (True, "haproxy serves")
    assert slow[2] >= 0.6 and slow[3] >= 0.24          # 60 ms answers: a poll every ≥ 0.6 s, ≥ 240 ms to answer
    assert slower[:2] == (True, "haproxy serves")      # 150 ms > the watch's 100 ms: still an answer, not a withdrawal
    assert slower[2] >= 1.5
    assert 0.1 <= fast_again[2] < 0.3                   # back to the watch's interval (a busy test host: < 30 ms answers)


# ------------------------------------------------------------------ HAProxy's ring of changes

# Real lines of HAProxy 2.6.12's `show events <ring> -w` (ring `format timed`, `log ring@… notice`).
EVENT_DOWN = ('<1>2026-12-02T08:11:22.564061+00:00 Server b1/s1 is DOWN, reason: Layer4 connection problem, '
              'info: "Connection refused", check duration: 0ms. 0 active and 0 backup servers left. '
              '0 sessions active, 0 requeued, 0 remaining in queue.')
EVENT_NONE = "<0>2026-12-02T08:11:22.564072+00:00 backend b1 has no server available!"
EVENT_STOPPED = "<4>2026-12-02T08:11:24.610760+00:00 Proxy f1 stopped (cumulated conns: FE: 0, BE: 0)."


def test_parse_event_reads_the_time_and_the_message() -> None:
    from datetime import datetime, timezone

    when, message = parse_event(EVENT_NONE + "\n")
    assert when == datetime(2026, 12, 2, 8, 11, 22, 564072, tzinfo=timezone.utc).timestamp()
    assert message == "backend b1 has no server available!"
    assert parse_event(EVENT_DOWN)[1].startswith("Server b1/s1 is DOWN")
    assert parse_event("No such event sink") is None      # HAProxy's answer for a ring it does not have
    assert parse_event("<1>yesterday Server b1/s1 is DOWN") is None


def test_the_event_stream_wakes_on_new_changes_only(tmp_path) -> None:
    """The ring's history (sent first on every opening) is not a change; a line logged after the
    opening is; a stream the worker ends (a reload) wakes the reader too."""
    import asyncio
    import socket
    import threading
    import time
    from datetime import datetime, timezone

    from anycastlb import healthd_main as hm

    commands: list[str] = []
    send_new = threading.Event()
    held: list[socket.socket] = []

    def answer(conn: socket.socket, command: str) -> None:
        commands.append(command)
        conn.sendall((EVENT_DOWN + "\n" + EVENT_NONE + "\n").encode())   # history: 2026-12-02 08:11
        if len(commands) == 1:
            send_new.wait(5)
            now = datetime.now(timezone.utc).isoformat()
            conn.sendall(f"<5>{now} Server b1/s1 is UP, reason: Layer4 check passed\n".encode())
            held.append(conn)
        else:
            conn.sendall(b"\n")
            conn.close()   # the second opening: the worker leaves (an empty line is no refusal)

    server, path = _unix_server(tmp_path / "ring.sock", answer)

    async def run() -> tuple:
        stream = hm.EventStream(path, "anycastlb-health")
        stream.open()
        history_only = await stream.wait(time.monotonic() + 0.3)
        send_new.set()
        woke = await stream.wait(time.monotonic() + 5)
        stream.open()
        ended = await stream.wait(time.monotonic() + 5)
        following = stream.following
        stream.close()
        return history_only, woke, ended, following

    try:
        history_only, woke, ended, following = asyncio.run(run())
    finally:
        server.close()
        for c in held:
            c.close()
    assert commands == ["show events anycastlb-health -w\n"] * 2
    assert history_only is False and woke is True and ended is True
    assert following is False   # closed: the next opening comes before the next stats read


def test_without_the_ring_healthd_reads_the_stats_every_interval(tmp_path, caplog) -> None:
    """A HAProxy without the ring (one not yet reloaded with anycastlb's config) answers so and
    closes: the stream says so once, stops following and asks again only after a while."""
    import asyncio
    import socket
    import time

    from anycastlb import healthd_main as hm

    opened: list[str] = []

    def answer(conn: socket.socket, command: str) -> None:
        opened.append(command)
        conn.sendall(b"No such event sink\n\n")
        conn.close()

    server, path = _unix_server(tmp_path / "ring.sock", answer)

    async def run() -> tuple:
        stream = hm.EventStream(path, "anycastlb-health")
        stream.open()
        refused = await stream.wait(time.monotonic() + 5)
        stream.open()   # within RING_RETRY_S: not asked again
        return refused, stream.following, stream.missing

    try:
        with caplog.at_level("WARNING", logger="anycastlb.healthd"):
            refused, following, missing = asyncio.run(run())
    finally:
        server.close()
    assert refused is None and following is False and missing == "No such event sink"
    assert len(opened) == 1
    assert "has no ring anycastlb-health (No such event sink): its stats are read every interval" in caplog.text


def test_following_the_ring_the_stats_are_read_every_reconcile_period(tmp_path) -> None:
    """The period between stats reads is the reconcile period while the ring is followed, the
    interval otherwise; slow answers stretch both (at most STATS_DUTY of the time asking)."""
    watcher, server, _path = _stats_watcher(tmp_path, lambda conn: conn.close())
    try:
        assert watcher.period() == pytest.approx(0.1) and watcher.period(following=True) == pytest.approx(1.0)
        watcher._took = 0.3
        assert watcher.period() == pytest.approx(3.0) and watcher.period(following=True) == pytest.approx(3.0)
    finally:
        watcher.pid.close()
        server.close()
