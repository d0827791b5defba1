"""The monitoring plugins against real output captured here.

BIRD 2.0.12 samples: a listener (mon1, 198.51.100.51) with add-paths rx from one route
reflector (198.51.100.11), two speakers at lb1's and lb2's addresses announcing
192.0.2.10/32 and 2001:db8:1::10/128 (lb1 also 192.0.2.20/32); the session to a second
route reflector (198.51.100.12) is down; ``ROUTE_V4_S2_DOWN`` is after lb2's BIRD was
killed. HAProxy 2.6.12 samples: ``/stats;csv`` and ``/metrics`` (the lines the plugin
reads) of a config with www-80 → www-8080 (web1 UP, web2 DOWN, web3 backup DOWN) and
imap-143 → imap-143 (mail1 DOWN).
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from anycastlb.plugins import anycastlb_notify_log as notify
from anycastlb.plugins import check_anycastlb_bird as bird
from anycastlb.plugins import check_anycastlb_haproxy as hap
from anycastlb.plugins import check_anycastlb_udp as udp

NODES = bird.node_map(["lb1=198.51.100.21,2001:db8:100::21", "lb2=198.51.100.22,2001:db8:100::22",
                       "lb3=198.51.100.23,2001:db8:100::23"])

ROUTE_V4 = '''\
BIRD 2.0.12 ready.
Table master4:
192.0.2.10/32        unicast [rout_rr1_4 07:17:58.893 from 198.51.100.11] * (100) [i]
	via 198.51.100.21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.21
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
                     unicast [rout_rr1_4 07:17:58.934 from 198.51.100.11] (100) [i]
	via 198.51.100.22 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.22
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.22
	BGP.cluster_list: 198.51.100.11
'''

ROUTE_V6 = '''\
BIRD 2.0.12 ready.
Table master6:
2001:db8:1::10/128   unicast [rout_rr1_6 07:17:58.102 from 2001:db8:100::11] * (100) [i]
	via 2001:db8:100::21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 2001:db8:100::21 fe80::c4ec:faff:feda:bbb4
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
                     unicast [rout_rr1_6 07:17:58.813 from 2001:db8:100::11] (100) [i]
	via 2001:db8:100::22 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 2001:db8:100::22 fe80::f09f:9ff:fef8:f840
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.22
	BGP.cluster_list: 198.51.100.11
'''

ROUTE_V4_S2_DOWN = '''\
BIRD 2.0.12 ready.
Table master4:
192.0.2.10/32        unicast [rout_rr1_4 07:17:58.893 from 198.51.100.11] * (100) [i]
	via 198.51.100.21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.21
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
'''

ROUTE_NONE = '''\
BIRD 2.0.12 ready.
Network not found
'''

ROUTE_ALL = '''\
BIRD 2.0.12 ready.
Table master4:
192.0.2.20/32        unicast [rout_rr1_4 07:17:58.893 from 198.51.100.11] * (100) [i]
	via 198.51.100.21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.21
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
192.0.2.10/32        unicast [rout_rr1_4 07:17:58.893 from 198.51.100.11] * (100) [i]
	via 198.51.100.21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.21
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
                     unicast [rout_rr1_4 07:17:58.934 from 198.51.100.11] (100) [i]
	via 198.51.100.22 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 198.51.100.22
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.22
	BGP.cluster_list: 198.51.100.11

Table master6:
2001:db8:1::10/128   unicast [rout_rr1_6 07:17:58.102 from 2001:db8:100::11] * (100) [i]
	via 2001:db8:100::21 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 2001:db8:100::21 fe80::c4ec:faff:feda:bbb4
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.21
	BGP.cluster_list: 198.51.100.11
                     unicast [rout_rr1_6 07:17:58.813 from 2001:db8:100::11] (100) [i]
	via 2001:db8:100::22 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 
	BGP.next_hop: 2001:db8:100::22 fe80::f09f:9ff:fef8:f840
	BGP.local_pref: 100
	BGP.originator_id: 198.51.100.22
	BGP.cluster_list: 198.51.100.11
'''

PROTOCOLS_ALL = '''\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     07:17:54.231  

rout_rr1_4 BGP        ---        up     07:17:58.397  Established   
  BGP state:          Established
    Neighbor address: 198.51.100.11
    Neighbor AS:      64512
    Local AS:         64512
    Neighbor ID:      198.51.100.11
    Local capabilities
      Multiprotocol
        AF announced: ipv4
      Route refresh
      Graceful restart
      4-octet AS numbers
      ADD-PATH
        RX: ipv4
        TX:
      Enhanced refresh
      Long-lived graceful restart
    Neighbor capabilities
      Multiprotocol
        AF announced: ipv4
      Route refresh
      Graceful restart
      4-octet AS numbers
      ADD-PATH
        RX:
        TX: ipv4
      Enhanced refresh
      Long-lived graceful restart
    Session:          internal AS4
    Source address:   198.51.100.51
    Hold timer:       4.867/6
    Keepalive timer:  0.594/2
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     100
    Input filter:   ACCEPT
    Output filter:  REJECT
    Routes:         3 imported, 0 exported, 2 preferred
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              3          0          0          0          3
      Import withdraws:            0          0        ---          0          0
      Export updates:              2          2          0        ---          0
      Export withdraws:            0        ---        ---        ---          0
    BGP Next hop:   198.51.100.51

rout_rr1_6 BGP        ---        up     07:17:58.062  Established   
  BGP state:          Established
    Neighbor address: 2001:db8:100::11
    Neighbor AS:      64512
    Local AS:         64512
    Neighbor ID:      198.51.100.11
    Local capabilities
      Multiprotocol
        AF announced: ipv6
      Route refresh
      Graceful restart
      4-octet AS numbers
      ADD-PATH
        RX: ipv6
        TX:
      Enhanced refresh
      Long-lived graceful restart
    Neighbor capabilities
      Multiprotocol
        AF announced: ipv6
      Route refresh
      Graceful restart
      4-octet AS numbers
      ADD-PATH
        RX:
        TX: ipv6
      Enhanced refresh
      Long-lived graceful restart
    Session:          internal AS4
    Source address:   2001:db8:100::51
    Hold timer:       4.881/6
    Keepalive timer:  1.256/2
  Channel ipv6
    State:          UP
    Table:          master6
    Preference:     100
    Input filter:   ACCEPT
    Output filter:  REJECT
    Routes:         2 imported, 0 exported, 1 preferred
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              2          0          0          0          2
      Import withdraws:            0          0        ---          0          0
      Export updates:              1          1          0        ---          0
      Export withdraws:            0        ---        ---        ---          0
    BGP Next hop:   2001:db8:100::51 fe80::1066:abff:fea3:4ba6

rout_rr2_4 BGP        ---        start  07:17:54.231  Active        Socket: No route to host
  BGP state:          Active
    Neighbor address: 198.51.100.12
    Neighbor AS:      64512
    Local AS:         64512
    Connect delay:    2.570/5
    Last error:       Socket: No route to host
  Channel ipv4
    State:          DOWN
    Table:          master4
    Preference:     100
    Input filter:   ACCEPT
    Output filter:  REJECT

'''

HAPROXY_CSV = '''\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
stats,FRONTEND,,,1,1,9983,1,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,1,,,,0,0,0,0,0,0,,1,1,1,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,1,1,1,1,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,87,0,0,0,
www-80,FRONTEND,,,0,0,9983,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,3,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
www-8080,web1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,1,1,3,0,,1,4,1,,0,,2,0,,0,L7OK,200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,3,4,,,,,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
www-8080,web2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,0,0,,1,4,2,,0,,2,0,,0,L7STS,404,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,File not found,,0,0,0,0,,,,Layer7 wrong status,,2,3,0,,,,,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
www-8080,web3,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,0,1,1,1,3,3,,1,4,3,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
www-8080,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,1,3,0,,1,4,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,57,57,9281,900,0,0,
imap-143,FRONTEND,,,0,0,9983,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,5,0,,,,0,0,0,0,,,,,,,,,,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,tcp,,0,0,0,,0,0,0,,,,,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
imap-143,mail1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,3,3,,1,6,1,,0,,2,0,,0,L4CON,,0,,,,,,,,,,,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,,,tcp,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
imap-143,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,DOWN,0,0,0,,1,3,3,,1,6,0,,0,,1,0,,0,,,,,,,,,,,,,,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,tcp,,,,,,,,0,0,0,,,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
'''

HAPROXY_METRICS = '''\
# HELP haproxy_frontend_status Current status of the service, per state label value.
# TYPE haproxy_frontend_status gauge
haproxy_frontend_status{proxy="stats",state="DOWN"} 0
haproxy_frontend_status{proxy="stats",state="UP"} 1
haproxy_frontend_status{proxy="www-80",state="DOWN"} 0
haproxy_frontend_status{proxy="www-80",state="UP"} 1
haproxy_frontend_status{proxy="imap-143",state="DOWN"} 0
haproxy_frontend_status{proxy="imap-143",state="UP"} 1
# HELP haproxy_backend_status Current status of the service, per state label value.
# TYPE haproxy_backend_status gauge
haproxy_backend_status{proxy="www-8080",state="DOWN"} 0
haproxy_backend_status{proxy="www-8080",state="UP"} 1
haproxy_backend_status{proxy="imap-143",state="DOWN"} 1
haproxy_backend_status{proxy="imap-143",state="UP"} 0
# HELP haproxy_backend_active_servers Total number of active UP servers with a non-zero weight
# TYPE haproxy_backend_active_servers gauge
haproxy_backend_active_servers{proxy="www-8080"} 1
haproxy_backend_active_servers{proxy="imap-143"} 0
# HELP haproxy_backend_backup_servers Total number of backup UP servers with a non-zero weight
# TYPE haproxy_backend_backup_servers gauge
haproxy_backend_backup_servers{proxy="www-8080"} 0
haproxy_backend_backup_servers{proxy="imap-143"} 0
# HELP haproxy_server_status Current status of the service, per state label value.
# TYPE haproxy_server_status gauge
haproxy_server_status{proxy="www-8080",server="web1",state="DOWN"} 0
haproxy_server_status{proxy="www-8080",server="web1",state="UP"} 1
haproxy_server_status{proxy="www-8080",server="web1",state="MAINT"} 0
haproxy_server_status{proxy="www-8080",server="web1",state="DRAIN"} 0
haproxy_server_status{proxy="www-8080",server="web1",state="NOLB"} 0
haproxy_server_status{proxy="www-8080",server="web2",state="DOWN"} 1
haproxy_server_status{proxy="www-8080",server="web2",state="UP"} 0
haproxy_server_status{proxy="www-8080",server="web2",state="MAINT"} 0
haproxy_server_status{proxy="www-8080",server="web2",state="DRAIN"} 0
haproxy_server_status{proxy="www-8080",server="web2",state="NOLB"} 0
haproxy_server_status{proxy="www-8080",server="web3",state="DOWN"} 1
haproxy_server_status{proxy="www-8080",server="web3",state="UP"} 0
haproxy_server_status{proxy="www-8080",server="web3",state="MAINT"} 0
haproxy_server_status{proxy="www-8080",server="web3",state="DRAIN"} 0
haproxy_server_status{proxy="www-8080",server="web3",state="NOLB"} 0
haproxy_server_status{proxy="imap-143",server="mail1",state="DOWN"} 1
haproxy_server_status{proxy="imap-143",server="mail1",state="UP"} 0
haproxy_server_status{proxy="imap-143",server="mail1",state="MAINT"} 0
haproxy_server_status{proxy="imap-143",server="mail1",state="DRAIN"} 0
haproxy_server_status{proxy="imap-143",server="mail1",state="NOLB"} 0
'''


# ------------------------------------------------------------------ BIRD parsing


def test_every_path_is_parsed_with_its_announcer():
    routes = bird.parse_routes(ROUTE_V4)
    assert [(r.net, r.proto, r.source, r.announcer) for r in routes] == [
        ("192.0.2.10/32", "rout_rr1_4", "198.51.100.11", "198.51.100.21"),
        ("192.0.2.10/32", "rout_rr1_4", "198.51.100.11", "198.51.100.22"),
    ]


def test_ipv6_paths_are_named_by_originator_id_not_link_local_next_hop():
    routes = bird.parse_routes(ROUTE_V6)
    assert bird.announcers(routes, NODES) == {"lb1", "lb2"}


def test_announcers_ok_when_the_expected_nodes_announce():
    state, line = bird.evaluate_announcers("192.0.2.10/32", bird.parse_routes(ROUTE_V4), ["lb1", "lb2"], NODES)
    assert state == bird.OK
    assert line.startswith("OK: 192.0.2.10/32 announced by 2 node(s): lb1, lb2")
    assert "announcers=2;;2:" in line


def test_announcers_critical_when_a_node_stops_announcing():
    state, line = bird.evaluate_announcers("192.0.2.10/32", bird.parse_routes(ROUTE_V4_S2_DOWN), ["lb1", "lb2"], NODES)
    assert state == bird.CRITICAL
    assert "missing: lb2" in line


def test_announcers_critical_when_nobody_announces():
    state, line = bird.evaluate_announcers("192.0.2.99/32", bird.parse_routes(ROUTE_NONE), ["lb1"], NODES)
    assert state == bird.CRITICAL and "announced by 0 node(s): none" in line


def test_announcers_warning_when_a_drained_node_still_announces():
    # lb2 is expected not to announce (drained) but does
    state, line = bird.evaluate_announcers("192.0.2.10/32", bird.parse_routes(ROUTE_V4), ["lb1"], NODES)
    assert state == bird.WARNING
    assert "unexpected: lb2" in line


def test_announcers_only_count_the_asked_prefix_in_a_full_table():
    state, line = bird.evaluate_announcers("192.0.2.20/32", bird.parse_routes(ROUTE_ALL), ["lb1"], NODES)
    assert state == bird.OK and "by 1 node(s): lb1" in line


def test_protocols_give_state_and_neighbor():
    protos = {p.name: p for p in bird.parse_protocols(PROTOCOLS_ALL)}
    assert protos["rout_rr1_4"].neighbor == "198.51.100.11" and protos["rout_rr1_4"].info == "Established"
    assert protos["rout_rr1_6"].neighbor == "2001:db8:100::11"
    assert protos["rout_rr2_4"].state == "start" and protos["rout_rr2_4"].info == "Active"


def test_rr_sessions_ok_for_the_reflector_that_hands_on_every_speaker():
    state, line = bird.evaluate_rr("rr1", bird.parse_protocols(PROTOCOLS_ALL), bird.parse_routes(ROUTE_ALL),
                                   ["198.51.100.11", "2001:db8:100::11"], ["lb1", "lb2"], NODES)
    assert state == bird.OK
    assert "2/2 session(s) Established; hands on paths of 2/2" in line


def test_rr_sessions_critical_for_the_reflector_whose_session_is_down():
    state, line = bird.evaluate_rr("rr2", bird.parse_protocols(PROTOCOLS_ALL), bird.parse_routes(ROUTE_ALL),
                                   ["198.51.100.12", "2001:db8:100::12"], ["lb1", "lb2"], NODES)
    assert state == bird.CRITICAL
    assert "rout_rr2_4 (Active)" in line and "no protocol for neighbor 2001:db8:100::12" in line


def test_rr_sessions_warning_when_a_speaker_is_missing():
    state, line = bird.evaluate_rr("rr1", bird.parse_protocols(PROTOCOLS_ALL), bird.parse_routes(ROUTE_ALL),
                                   ["198.51.100.11", "2001:db8:100::11"], ["lb1", "lb2", "lb3"], NODES)
    assert state == bird.WARNING and "no paths from lb3" in line


def _fake_birdc(tmp_path: Path, text: str, rc: int = 0) -> str:
    out = tmp_path / "out.txt"
    out.write_text(text)
    script = tmp_path / "birdc"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/args\ncat {out}\nexit {rc}\n")
    script.chmod(0o755)
    return str(script)


def test_main_runs_birdc_read_only_on_the_socket(tmp_path, capsys):
    fake = _fake_birdc(tmp_path, ROUTE_V4)
    rc = bird.main(["announcers", "--birdc", fake, "--socket", "/x/bird.ctl", "--prefix", "192.0.2.10/32",
                    "--expected", "lb1", "--expected", "lb2", "--node", "lb1=198.51.100.21", "--node", "lb2=198.51.100.22"])
    assert rc == 0 and capsys.readouterr().out.startswith("OK: 192.0.2.10/32")
    assert (tmp_path / "args").read_text().split() == ["-r", "-s", "/x/bird.ctl", "show", "route", "192.0.2.10/32", "all"]


def test_main_unknown_when_bird_is_unreachable(tmp_path, capsys):
    fake = _fake_birdc(tmp_path, "Unable to connect to server control socket (/x): No such file or directory\n", 1)
    assert bird.main(["announcers", "--birdc", fake, "--socket", "/x", "--prefix", "192.0.2.10/32"]) == bird.UNKNOWN
    assert "UNKNOWN: cannot read BIRD" in capsys.readouterr().out


# ------------------------------------------------------------------ HAProxy


@pytest.mark.parametrize("sample", ["csv", "prometheus"])
def test_haproxy_ok_with_one_up_server(sample):
    stats = hap.parse(HAPROXY_CSV if sample == "csv" else HAPROXY_METRICS)
    state, line = hap.evaluate(stats, "www-80", "www-8080", "lb1")
    assert state == hap.OK
    assert "frontend www-80 OPEN on lb1; backend www-8080: 1/3 server(s) UP (web1)" in line
    assert "web2 DOWN" in line


@pytest.mark.parametrize("sample", ["csv", "prometheus"])
def test_haproxy_critical_when_no_server_is_up(sample):
    stats = hap.parse(HAPROXY_CSV if sample == "csv" else HAPROXY_METRICS)
    state, line = hap.evaluate(stats, "imap-143", "imap-143")
    assert state == hap.CRITICAL and "0/1 server(s) UP" in line


def test_haproxy_critical_when_the_frontend_is_missing():
    state, line = hap.evaluate(hap.parse(HAPROXY_METRICS), "intranet-80", "intranet-8080", "lb1")
    assert state == hap.CRITICAL and "frontend intranet-80 not found on lb1" in line


def test_haproxy_warning_when_only_a_backup_is_up():
    # the captured CSV with web1 DOWN and the backup web3 UP (a one-field edit of the real output)
    lines = HAPROXY_CSV.splitlines()
    lines = [l.replace(",UP,1,1,0,", ",DOWN,1,1,0,") if l.startswith("www-8080,web1,") else l for l in lines]
    lines = [l.replace(",DOWN,1,0,1,", ",UP,1,0,1,") if l.startswith("www-8080,web3,") else l for l in lines]
    state, line = hap.evaluate(hap.parse("\n".join(lines) + "\n"), "www-80", "www-8080")
    assert state == hap.WARNING and "only backup servers are UP" in line


def test_haproxy_draining_server_is_not_counted_up():
    lines = [l.replace(",UP,1,1,0,", ",DRAIN,1,1,0,") if l.startswith("www-8080,web1,") else l
             for l in HAPROXY_CSV.splitlines()]
    state, line = hap.evaluate(hap.parse("\n".join(lines) + "\n"), "www-80", "www-8080")
    assert state == hap.CRITICAL and "web1 DRAIN" in line


def test_haproxy_garbage_is_refused():
    with pytest.raises(ValueError):
        hap.parse("<html>not stats</html>")


def test_haproxy_checks_of_one_node_share_one_fetch(tmp_path, capsys, monkeypatch, serve_text):
    """Many services, one endpoint: within --cache-s the checks read one parsed copy."""
    port, hits = serve_text(HAPROXY_METRICS)
    monkeypatch.setattr(hap.tempfile, "gettempdir", lambda: str(tmp_path))
    args = ["-H", "127.0.0.1", "-p", str(port), "--frontend", "www-80", "--backend", "www-8080"]
    assert hap.main(args) == hap.OK
    assert hap.main([*args[:-4], "--frontend", "imap-143", "--backend", "imap-143"]) == hap.CRITICAL
    assert len(hits) == 1, "the second service's check read the shared copy"
    assert hap.main([*args, "--cache-s", "0"]) == hap.OK
    assert len(hits) == 2
    for f in (tmp_path / f"anycastlb-haproxy-stats-{os.getuid()}").glob("*.json"):
        os.utime(f, (time.time() - 11, time.time() - 11))  # the window is over
    assert hap.main(args) == hap.OK
    assert len(hits) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK: frontend www-80 OPEN") and out[1].startswith("CRITICAL")


def test_haproxy_stats_cache_must_be_private(tmp_path, monkeypatch):
    d = tmp_path / f"anycastlb-haproxy-stats-{os.getuid()}"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    monkeypatch.setattr(hap.tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(OSError, match="not a private directory"):
        hap.cache_dir()


# ------------------------------------------------------------------ UDP, notifications


def test_udp_sends_again_when_a_datagram_is_lost():
    """The first datagram goes unanswered (lost); the probe sends again after --retry and passes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    seen = []

    def answer_the_second() -> None:
        for _ in range(2):
            data, peer = srv.recvfrom(100)
            seen.append(time.monotonic())
        srv.sendto(b"~KRB-ERROR " + data, peer)

    t = threading.Thread(target=answer_the_second, daemon=True)
    t.start()
    state, line = udp.probe("127.0.0.1", port, b"probe", 2.0, retry=0.3)
    t.join(2)
    srv.close()
    assert state == udp.OK, line
    assert len(seen) == 2 and 0.25 <= seen[1] - seen[0] < 1.0


def test_udp_ok_on_an_answer_critical_on_refusal():
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def answer() -> None:
        data, peer = srv.recvfrom(100)
        srv.sendto(b"~KRB-ERROR " + data, peer)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    state, line = udp.probe("127.0.0.1", port, b"probe", 2.0)
    t.join(2)
    srv.close()
    assert state == udp.OK and "answered" in line
    state, line = udp.probe("127.0.0.1", port, b"probe", 1.0)
    assert state == udp.CRITICAL and "refused" in line


def test_notify_log_appends_one_tab_separated_line(tmp_path):
    log = tmp_path / "n.log"
    for _ in range(2):
        assert notify.main(["--log", str(log), "--type", "PROBLEM", "--user", "netops", "--host", "web2",
                            "--service", "backend www web2:8080", "--state", "CRITICAL",
                            "--output", "Connection refused\nsecond line"]) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[1:] == ["PROBLEM", "netops", "web2", "backend www web2:8080", "CRITICAL",
                                        "Connection refused second line"]


@pytest.mark.parametrize("module", ["check_anycastlb_acme", "check_anycastlb_bird", "check_anycastlb_haproxy",
                                    "check_anycastlb_poll", "check_anycastlb_udp", "anycastlb_notify_log"])
def test_plugins_are_standalone_scripts(module):
    """Deployed as files on the monitoring node: python3 shebang, standard library only."""
    src = (Path(bird.__file__).parent / f"{module}.py").read_text()
    assert src.startswith("#!/usr/bin/python3\n")
    imports = {line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}
