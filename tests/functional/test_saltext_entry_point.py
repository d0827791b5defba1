"""anycastlb as a Salt extension: the loader finds its modules through the ``salt.loader`` entry point.

No ``module_dirs``, ``states_dirs``, ``pillar_dirs``, ``runner_dirs`` and no
``saltutil.sync_all``: only the installed package (the test venv's editable install
registers the entry point, as ``pip install anycastlb`` does).
"""
from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from anycastlb.saltext import LOADER_TYPES, loader_dirs

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"modules": "_modules", "states": "_states", "pillar": "_pillar", "runners": "_runners"}


def test_entry_point_is_declared_and_points_at_the_top_level_modules():
    eps = [ep for ep in entry_points(group="salt.loader") if ep.value == "anycastlb.saltext:loader_dirs"]
    assert len(eps) == 1, "pip install -e . (or bash .ci/setup) registers the entry point"
    dirs = eps[0].load()()
    assert sorted(dirs) == sorted(LOADER_TYPES) == sorted(loader_dirs())
    for kind, [path] in dirs.items():
        # the very files saltutil.sync_all users get from the top-level directories
        assert filecmp.cmp(Path(path) / "anycastlb_mod.py", REPO / TOP_LEVEL[kind] / "anycastlb_mod.py",
                           shallow=False)
        assert not (Path(path) / "anycastlb.py").exists(), "a file named like the package would shadow it"


@pytest.fixture
def bare_opts(tmp_path, campus_catalog, make_minion_opts):
    """Minion opts with no module directory of ours: only the entry point can bring the modules."""
    return make_minion_opts(tmp_path, "lb1", campus_catalog, None,
                            module_dirs=[], states_dirs=[], pillar_dirs=[], runner_dirs=[])


def test_loader_finds_execution_state_pillar_and_runner_modules(bare_opts):
    import salt.loader

    utils = salt.loader.utils(bare_opts)
    mods = salt.loader.minion_mods(bare_opts, utils=utils)
    assert "anycastlb.daemons" in mods and "anycastlb.status" in mods
    states = salt.loader.states(bare_opts, mods, utils, {})
    assert "anycastlb.configured" in states
    assert "anycastlb" in {k.split(".")[0] for k in salt.loader.pillars(bare_opts, mods)}
    runners = salt.loader.runner({**bare_opts, "ext_pillar": bare_opts["ext_pillar"]}, utils=utils)
    assert "anycastlb.plan" in runners and "anycastlb.lint" in runners


def test_pillar_compiles_through_the_entry_point_module(bare_opts):
    import salt.pillar

    pillar = salt.pillar.get_pillar(bare_opts, {}, "lb1", saltenv="base").compile_pillar()
    assert "_errors" not in pillar, pillar.get("_errors")
    assert pillar["anycastlb"]["node"] == "lb1"


def test_sync_all_finds_the_modules_in_the_documented_file_roots(tmp_path):
    """docs/install.md without the entry point: file_roots = the repo's salt/, then saltutil.sync_all."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(f"root_dir: {tmp_path / 'root'}\nfile_client: local\nid: probe\n"
                                 f"file_roots: {{base: [{REPO / 'salt'}]}}\n")
    salt_call = Path(sys.executable).with_name("salt-call")
    proc = subprocess.run([str(salt_call), "-c", str(conf), "--local", "--out=json", "saltutil.sync_all"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    synced = json.loads(proc.stdout)["local"]
    for kind in ("modules", "states", "pillar"):
        assert f"{kind}.anycastlb_mod" in synced[kind], synced
    extmods = next((tmp_path / "root").rglob("extmods"))
    assert (extmods / "modules" / "anycastlb_mod.py").is_file()
