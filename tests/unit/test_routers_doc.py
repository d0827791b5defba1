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


def test_lab_peers_mirror_the_catalogs_session_knobs(tmp_path: Path) -> None:
    """A peer with session: multihop, bfd off or its own timers gets the same on the router's side."""
    from anycastlb.lab.peer import session_knobs

    text = (ROOT / "anycastlb" / "examples" / "campus.yaml").read_text().replace(
        'asn: 64500}', 'asn: 64500, session: multihop, bfd: {interval: 300ms, multiplier: 5}}', 1)
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    knobs = session_knobs(p, "core1")
    assert knobs == {"multihop": True, "bfd": True, "bfd_timers": {"interval_ms": 300, "multiplier": 5}}
    cat = load(p)
    b = render(cat, "core1", knobs=knobs)
    assert "  multihop;\n" in b and "  multihop {\n    interval 300 ms;\n    multiplier 5;" in b
    f = render_frr(cat, "core1", knobs)
    assert " neighbor 198.51.100.11 ebgp-multihop 8" in f["bgpd"] and "  receive-interval 300" in f["bfdd"]
    off = {**knobs, "bfd": False, "multihop": False}
    assert "  bfd off;" in render(cat, "core1", knobs=off) and "bfd profile" not in render_frr(cat, "core1", off)["bgpd"]
    assert session_knobs(ROOT / "anycastlb" / "examples" / "campus.yaml", "core1") == {
        "multihop": False, "bfd": True, "bfd_timers": None}
    if shutil.which("bird"):
        (tmp_path / "bird.conf").write_text(b)
        r = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    if Path("/usr/lib/frr/bgpd").exists():
        for daemon in ("bfdd", "bgpd"):
            (tmp_path / f"{daemon}.conf").write_text(f[daemon])
            assert frr_check(daemon, tmp_path / f"{daemon}.conf") == ""
