"""Every catalog the project ships compiles; lint ⊇ check on the grammar's edges (real checkers)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = [ROOT / "anycastlb" / "examples" / "campus.yaml"] + sorted(
    p for p in (ROOT / "tests" / "data").iterdir() if p.suffix == ".yaml" or p.is_dir())
DAEMONS = ("haproxy", "bird", "apache2", "icinga2", "nft")


@pytest.mark.parametrize("catalog", CATALOGS, ids=lambda p: p.name)
def test_shipped_catalog_compiles_and_every_node_has_a_model(catalog):
    fleet = compile_catalog(catalog)
    assert fleet.nodes and all(fleet.nodes[n]["node"] == n for n in fleet.nodes)


@pytest.mark.skipif(not all(shutil.which(d) for d in DAEMONS) or not shutil.which("openssl"),
                    reason="the daemons' checkers are not installed")
@pytest.mark.parametrize("catalog", [c for c in CATALOGS if c.name != "campus.yaml"], ids=lambda p: p.name)
def test_what_lint_accepts_every_checker_accepts(catalog):
    lint = subprocess.run([sys.executable, "-m", "anycastlb.cli", "lint", str(catalog)], capture_output=True,
                          text=True, timeout=120)
    assert lint.returncode == 0, lint.stderr
    r = subprocess.run([sys.executable, "-m", "anycastlb.cli", "check", str(catalog)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr
    assert "REFUSED" not in r.stdout
