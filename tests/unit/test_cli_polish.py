"""Issue 19 items 5 and 6: every error in one round and in our words; no traceback on a user's mistake;
help on every argument; ``show`` prints the firewall rules it counts."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb.cli import build_parser
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anycastlb.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, input=stdin)


def errors_of(path: Path) -> list[str]:
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(path)
    return [str(e) for e in exc.value.errors]


ROUND = """\
bgp: {asn: x, bfd: 5}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {address: 198.51.100.11, roles: [route-reflector]}
  lb1: {address: 198.51.100.21}
clusters:
  edge: {nodes: [lb1]}
services:
  www:
    extends: nothere
    cluster: nope
    vip: 203.0.113.1
    tls: x
  app:
    mode: http
    cluster: gone
    vip: 192.0.2.10
    ports: [80]
    backends: [lb9]
    check: {interval: 2}
"""


def test_every_error_in_one_round_however_they_nest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(ROUND)
    errors = errors_of(p)
    expected = [
        (1, "bgp, key 'asn'", "'x' is not an integer"),
        (1, "bgp, key 'bfd'", "expected a mapping with the keys interval, multiplier"),
        (11, "service 'www', key 'extends'", "template 'nothere' does not exist"),
        (12, "service 'www', key 'cluster'", "cluster 'nope' does not exist"),
        (13, "service 'www', key 'vip[0]'", "outside vip_pools"),
        (14, "service 'www', key 'tls'", "expected a mapping with the keys certificate"),
        (17, "service 'app', key 'cluster'", "cluster 'gone' does not exist"),
        (20, "service 'app', key 'backends.lb9'", "not a node and has no address"),
        (21, "service 'app', key 'check.interval'", "2 has no unit: write 2ms or 2s"),
    ]
    for line, what, words in expected:
        assert any(e.startswith(f"{p}:{line}: {what}:") and words in e for e in errors), (line, what, errors)
    assert not any("Input should be" in e or "Value error" in e for e in errors), errors


def test_a_bad_section_in_one_file_hides_nothing_in_the_others(tmp_path):
    (tmp_path / "a.yaml").write_text("bgp: [64512]\nzones: {}\n")
    (tmp_path / "b.yaml").write_text(CAMPUS.read_text().replace("bgp:\n  asn: 64512", "bgp_old:\n  asn: 64512")
                                     .replace("cluster: edge\n    ports: [143", "cluster: edgy\n    ports: [143"))
    errors = errors_of(tmp_path)
    assert any(e.startswith(f"{tmp_path / 'a.yaml'}:1: catalog, key 'bgp'") for e in errors), errors
    assert any(e.startswith(f"{tmp_path / 'a.yaml'}:2:") and "unknown section 'zones'" in e for e in errors)
    assert any("unknown section 'bgp_old'" in e for e in errors)
    assert any("service 'imap', key 'cluster': cluster 'edgy' does not exist" in e for e in errors), errors


def test_render_onto_an_existing_file_is_a_message(tmp_path):
    out = tmp_path / "file"
    out.write_text("")
    r = run("render", str(CAMPUS), "--out", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: Not a directory:") and str(out) in r.stderr


@pytest.mark.parametrize("args", [("show", str(CAMPUS), "mon1", "--json"), ("show", str(CAMPUS), "lb1"),
                                  ("schema",)])
def test_output_into_a_closed_pipe_is_quiet(args):
    # the reader is gone before the first write (``anycastlb show ... | head`` at its worst)
    proc = subprocess.Popen([sys.executable, "-m", "anycastlb.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 141


@pytest.mark.parametrize("make,words", [
    (lambda d: d / "missing.yaml", "no such file or directory"),
    (lambda d: (d / "bin.yaml").write_bytes(b"bgp: {asn: 1}\n\xff\xfe") and d / "bin.yaml", "not UTF-8 text"),
    (lambda d: (d / "dir.yaml").mkdir() or d / "dir.yaml", "holds no .yaml files"),
])
def test_file_mistakes_are_messages(tmp_path, make, words):
    path = make(tmp_path)
    r = run("lint", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {path}") and words in r.stderr


def test_every_argument_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
                missing.append(f"{where} {action.dest}")

    walk(build_parser(), "anycastlb")
    assert not missing, missing


def test_show_prints_the_rules_it_counts():
    r = run("show", str(CAMPUS), "lb1")
    assert r.returncode == 0, r.stderr
    count = int(r.stdout.split("firewall: default drop, ")[1].split(" ")[0])
    rules = [x for x in r.stdout.splitlines() if x.startswith("    accept ")]
    assert len(rules) == count
    assert "    accept tcp 22 from 198.51.100.0/24, 2001:db8:100::/64 to 198.51.100.21, 2001:db8:100::21" \
           "  # ssh from management" in rules
