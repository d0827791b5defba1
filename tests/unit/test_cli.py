"""The CLI as a user runs it: lint, show, diff, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anycastlb.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_lint_good_catalog():
    r = run("lint", str(CAMPUS))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    assert "4 services, 6 VIPs, 11 nodes" in r.stdout
    assert "3 haproxy" in r.stdout and "2 route-reflector" in r.stdout


def test_lint_bad_catalog_lists_every_error(tmp_path):
    text = CAMPUS.read_text().replace("vip: 192.0.2.20", "vip: 203.0.113.20").replace(
        "balance: leastconn", "balance: fastest")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = run("lint", str(bad))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    assert any(f"{bad}:" in line and "service 'imap', key 'vip[0]'" in line for line in lines)
    assert any("service 'intranet', key 'balance'" in line for line in lines)
    assert "refused: 2 error(s)" in r.stderr


def test_lint_with_secrets_checks_certificates(tmp_path):
    sec = tmp_path / "secrets.yaml"
    sec.write_text("certificates: {}\n")
    r = run("lint", str(CAMPUS), "--secrets", str(sec))
    assert r.returncode == 1 and "certificate 'campus-wildcard' is not in the secrets pillar" in r.stderr


def test_show_json_is_the_model():
    r = run("show", str(CAMPUS), "lb3", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["node"] == "lb3" and m["state"] == "drain" and m["bgp"]["announce"] == []


def test_show_text_and_unknown_node():
    r = run("show", str(CAMPUS), "lb1")
    assert "frontend www-443 http 192.0.2.10, 2001:db8:1::10 :443 tls -> www-8080" in r.stdout
    r = run("show", str(CAMPUS), "nosuch")
    assert r.returncode == 2 and "node 'nosuch' is not in" in r.stderr


def test_diff_reports_services_and_nodes(tmp_path):
    new = tmp_path / "new.yaml"
    text = CAMPUS.read_text().replace("web1: {weight: 100}", "web1: {weight: 80}") + (
        "\n  dns:\n    mode: anycast\n    vip: 192.0.2.53\n    ports: [53/udp, 53/tcp]\n"
        "    backends: [kdc1]\n")
    new.write_text(text)
    r = run("diff", str(CAMPUS), str(new))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "+ dns (new)" in out
    assert "~ intranet" in out and "backend web1: weight 100 -> 80" in out
    assert "~ lb1: " in out and "haproxy" in out.split("~ lb1: ")[1].splitlines()[0]
    assert "~ kdc1: " in out and "announces: +[192.0.2.53/32]" in out
    assert "~ kdc2" not in out   # kdc2 is not a backend of dns
    assert "~ web2" not in out   # only a weight of web1 changed: web2's vhosts, firewall stay


def test_diff_no_change():
    r = run("diff", str(CAMPUS), str(CAMPUS))
    assert r.returncode == 0 and r.stdout.startswith("no change")


def test_schema_accepts_the_campus_catalog_and_refuses_unknown_keys():
    jsonschema = pytest.importorskip("jsonschema")
    r = run("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    doc = yaml.safe_load(CAMPUS.read_text())
    jsonschema.validate(doc, schema)
    doc["services"]["www"]["colour"] = "blue"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_roster_from_catalog():
    r = run("roster", str(CAMPUS), "lb1", "web2", "--priv", "/etc/salt/pki/ssh/salt-ssh.rsa")
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data == {
        "lb1": {"host": "198.51.100.21", "user": "root", "port": 22, "priv": "/etc/salt/pki/ssh/salt-ssh.rsa",
                "minion_opts": {"id": "lb1", "anycastlb_master": "198.51.100.2"}},
        "web2": {"host": "198.51.100.32", "user": "root", "port": 22, "priv": "/etc/salt/pki/ssh/salt-ssh.rsa",
                 "minion_opts": {"id": "web2", "anycastlb_master": "198.51.100.2"}}}
    assert run("roster", str(CAMPUS), "nosuch").returncode == 2
