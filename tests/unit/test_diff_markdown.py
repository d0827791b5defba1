"""`anycastlb diff OLD NEW --format markdown`: the merge-request comment a reviewer reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anycastlb.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def changed(tmp_path: Path, old: str, new: str) -> Path:
    text = CAMPUS.read_text()
    assert old in text
    path = tmp_path / "new.yaml"
    path.write_text(text.replace(old, new))
    return path


def drain_rows(md: str) -> dict[str, str]:
    """node -> the 'during the deploy' cell of the Drains table."""
    section = md.split("#### Drains", 1)[1].split("####", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0].strip(): r[2].strip() for r in rows[1:]}


def test_a_vip_removed_drains_the_lb_nodes_one_by_one(tmp_path):
    new = changed(tmp_path, 'vip: [192.0.2.10, "2001:db8:1::10"]', "vip: 192.0.2.10")
    r = run("diff", str(CAMPUS), str(new), "--format", "markdown")
    assert r.returncode == 0, r.stderr
    md = r.stdout
    assert md.startswith("### anycastlb diff\n")
    assert "2 node(s) will be drained during the deploy" in md
    rows = drain_rows(md)
    assert rows["lb1"] == rows["lb2"] == "**drained**, then undrained"
    assert rows["lb3"] == "applied drained, stays drained"   # state: drain in the catalog
    assert "| lb1 | cluster edge | **drained**, then undrained | it stops announcing 2001:db8:1::10/128 |" in md
    assert "~ www\n    vips: -[2001:db8:1::10]" in md
    assert "~ lb1: bgp, firewall, haproxy, health, steering\n    announces: -[2001:db8:1::10/128]" in md
    assert "kdc1" not in md   # the anycast backends do not change


def test_a_weight_change_drains_nothing(tmp_path):
    new = changed(tmp_path, "web1: {weight: 100}", "web1: {weight: 80}")
    md = run("diff", str(CAMPUS), str(new), "--format", "markdown").stdout
    assert "0 node(s) will be drained during the deploy" in md
    rows = drain_rows(md)
    assert rows["lb1"] == rows["lb2"] == "applied in place, not drained"
    assert "**drained**" not in md
    assert "backend web1: weight 100 -> 80" in md


def test_raw_lines_cannot_break_out_of_their_code_block(tmp_path):
    new = changed(tmp_path, "    check: {tcp: {}}\n",
                  "    check: {tcp: {}}\n    haproxy: {raw: {frontend: ['http-request set-var(txn.a) str(```)']}}\n")
    r = run("diff", str(CAMPUS), str(new), "--format", "markdown")
    assert r.returncode == 0, r.stderr
    block = r.stdout.split("> [!WARNING]", 1)[1]
    assert "\n````diff\n+ imap frontend: http-request set-var(txn.a) str(```)\n````\n" in block


def test_no_change_and_the_other_formats_still_work(tmp_path):
    r = run("diff", str(CAMPUS), str(CAMPUS), "--format", "markdown")
    assert r.returncode == 0 and "No change" in r.stdout
    new = changed(tmp_path, "web1: {weight: 100}", "web1: {weight: 80}")
    assert run("diff", str(CAMPUS), str(new)).stdout.startswith("Services:\n  ~ intranet")
    report = json.loads(run("diff", str(CAMPUS), str(new), "--json").stdout)
    assert report["services"]["changed"] == {"intranet": ["backend web1: weight 100 -> 80"]}
