"""``anycastlb ports``: the port matrix is read from the compiled firewall rules, and docs/firewall.md shows it."""
from __future__ import annotations

import re
from pathlib import Path

from anycastlb.cli import main
from anycastlb.compiler import compile_catalog
from anycastlb.ports import markdown, rows

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


def test_doc_table_equals_the_command_output(capsys) -> None:
    assert main(["ports", str(CAMPUS)]) == 0
    out = capsys.readouterr().out
    doc = (ROOT / "docs" / "firewall.md").read_text()
    m = re.search(r"<!-- anycastlb ports anycastlb/examples/campus.yaml: begin -->\n(.*?)<!-- anycastlb ports: end -->",
                  doc, re.S)
    assert m, "docs/firewall.md lost its generated table"
    assert m.group(1) == out, "docs/firewall.md is stale: paste `anycastlb ports anycastlb/examples/campus.yaml`"


def test_every_rule_of_every_node_is_in_the_matrix() -> None:
    fleet = compile_catalog(CAMPUS)
    table = rows(fleet)
    for nid in fleet.nodes:
        for r in fleet.nodes[nid]["firewall"]["rules"]:
            port = f"{r['protocol']} " + ", ".join(map(str, r["ports"]))
            assert any(nid in row["to"].split(", ") and row["port"] == port for row in table), (nid, r["comment"])
    bgp = [r for r in table if r["why"] == "BGP (peer)"]
    assert bgp == [{"to": "rr1, rr2", "port": "tcp 179", "from": "peer core1", "on": "node", "why": "BGP (peer)"}]
    assert markdown(table).count("\n") == len(table) + 2


def test_one_node_and_unknown_node(capsys) -> None:
    assert main(["ports", str(CAMPUS), "web1"]) == 0
    out = capsys.readouterr().out
    assert "| web1 | tcp 8080 | lb1, lb2, lb3, mon1 | node |" in out and "rr1" not in out.split("\n", 2)[2].split("|")[1]
    assert main(["ports", str(CAMPUS), "nosuch"]) == 2
