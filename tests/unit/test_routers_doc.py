"""docs/routers.md: its BIRD and FRR configurations are the ones the lab runs, and their checkers accept them."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anycastlb.lab.catalog import load
from anycastlb.lab.peer import frr_check, render, render_frr

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "routers.md").read_text()
CAMPUS = load(ROOT / "anycastlb" / "examples" / "campus.yaml")


def block(name: str) -> str:
    m = re.search(rf"<!-- generated: {re.escape(name)} -->\n```\n(.*?)```\n", DOC, re.S)
    assert m, f"docs/routers.md lost its {name} block"
    return m.group(1)


def test_bird_block_is_the_lab_peer_config() -> None:
    assert block("bird core1") == render(CAMPUS, "core1"), "regenerate the block from anycastlb.lab.peer.render"


@pytest.mark.parametrize("daemon", ["zebra", "bfdd", "bgpd"])
def test_frr_blocks_are_the_lab_peer_config(daemon: str) -> None:
    assert block(f"frr {daemon} core1") == render_frr(CAMPUS, "core1")[daemon]


@pytest.mark.skipif(not shutil.which("bird"), reason="bird is not installed")
def test_bird_block_passes_bird_p(tmp_path: Path) -> None:
    (tmp_path / "bird.conf").write_text(block("bird core1"))
    r = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists(), reason="FRR is not installed (apt-get install frr)")
@pytest.mark.parametrize("daemon", ["zebra", "bfdd", "bgpd"])
def test_frr_blocks_pass_frr_check(tmp_path: Path, daemon: str) -> None:
    conf = tmp_path / f"{daemon}.conf"
    conf.write_text(block(f"frr {daemon} core1"))
    assert frr_check(daemon, conf) == ""


@pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists(), reason="FRR is not installed (apt-get install frr)")
def test_frr_check_reads_messages(tmp_path: Path) -> None:
    """FRR's -C exits 0 on an unknown command: frr_check must still refuse it."""
    conf = tmp_path / "bgpd.conf"
    conf.write_text(render_frr(CAMPUS, "core1")["bgpd"].replace(" timers bgp 2 6", " timers bgp sometimes"))
    assert "timers bgp sometimes" in frr_check("bgpd", conf)


def test_untested_platforms_are_marked() -> None:
    for platform in ("Junos", "Arista EOS", "Cisco NX-OS"):
        assert f"## {platform} (NOT TESTED)" in DOC
    for platform in ("BIRD 2", "FRR"):
        assert f"## {platform} (tested)" in DOC
