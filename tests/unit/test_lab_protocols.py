"""The lab's protocol stand-ins: which hosts get them, and that they answer what the checks ask."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.lab.probe import probe
from anycastlb.lab.protocols import kdc_conf, protocol_stand_ins
from anycastlb.lab.responder import ldap_bind_response

FLEET = Path(__file__).resolve().parents[1] / "data" / "operator-fleet.yaml"
RESPONDER = Path(__file__).resolve().parents[2] / "anycastlb" / "lab" / "responder.py"


def test_stand_ins_of_the_operator_fleet() -> None:
    got = protocol_stand_ins(compile_catalog(FLEET))
    assert got == {"ldap1": {"ldap": [1389, 1636]}, "ldap2": {"ldap": [1389, 1636]},
                   "dns1": {"dns": [(53, "www.example.org", "A")], "kerberos": [(88, "EXAMPLE.ORG")]},
                   "dns2": {"dns": [(53, "www.example.org", "A")], "kerberos": [(88, "EXAMPLE.ORG")]}}


def test_kdc_conf_serves_the_realm_on_the_check_port() -> None:
    conf = kdc_conf("EXAMPLE.ORG", 8888)
    assert "kdc_ports = 8888" in conf and "kdc_tcp_listen = 8888" in conf
    assert "EXAMPLE.ORG = {" in conf and "database_name = /var/lib/krb5kdc/principal" in conf


def test_bind_response_echoes_the_message_id() -> None:
    assert ldap_bind_response(bytes.fromhex("300c020107600702010304008000")) == bytes.fromhex(
        "300c02010761070a010004000400")
    assert ldap_bind_response(b"kdc1 88\n") == b""


def test_ldap_stand_in_answers_the_lab_probe_and_keeps_idle_binds() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(RESPONDER), "--name", "ldap1", "--ldap", str(port), "--idle", "0.2"],
                            stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while (res := probe({"kind": "ldap", "address": "127.0.0.1", "port": port}))["ok"] is False:
            assert time.monotonic() < deadline, res
            time.sleep(0.05)
        assert res["detail"] == "bind: success"
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            time.sleep(1.5)   # idle well past --idle: a directory keeps the bind open
            c.sendall(bytes.fromhex("300c020101600702010304008000"))
            assert c.recv(64).startswith(bytes.fromhex("300c02010161070a0100"))
        banner = probe({"kind": "tcp", "address": "127.0.0.1", "port": port, "timeout": 0.3})
        assert not banner["ok"]   # no banner on an LDAP port
    finally:
        proc.kill()
        proc.wait(5)
