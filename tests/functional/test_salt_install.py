"""``anycastlb.install``: the package (with anycastlb-healthd and the Salt extension) from a wheel.

The state runs for real through Salt's loader: ``pip.installed`` installs a wheel built
from this checkout into a fresh venv (``bin_env``; ``no_deps``: no package index is
needed), then the venv holds the modules the Salt loader's entry point names and the
``anycastlb-healthd`` script.
"""
from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel (pip, about a minute here)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _apply(make_minion_opts, tmp_path, catalog, pillar: dict, test: bool = False):
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(make_minion_opts(tmp_path / "minion", "printserver42", catalog, None))
    try:
        return loaders.modules.state.sls("anycastlb.install", pillar={"anycastlb_install": pillar}, test=test).raw
    finally:
        loaders.reset_state()


def test_install_state_puts_the_package_and_healthd_into_a_venv(make_minion_opts, tmp_path, campus_catalog,
                                                                 wheel_dir):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    pillar = {"requirement": "anycastlb==0.1.0", "find_links": str(wheel_dir), "no_deps": True,
              "bin_env": str(env)}
    dry = _apply(make_minion_opts, tmp_path, campus_catalog, pillar, test=True)
    [(_, dry_ret)] = dry.items()
    assert dry_ret["result"] is None and not (env / "bin" / "anycastlb-healthd").exists(), dry_ret

    ret = _apply(make_minion_opts, tmp_path, campus_catalog, pillar)
    [(key, state)] = ret.items()
    assert key.startswith("pip_|-anycastlb-package_|-") and state["result"] is True, state
    assert (env / "bin" / "anycastlb-healthd").exists()
    site = next((env / "lib").glob("python3*/site-packages"))
    for kind in ("modules", "states", "pillar", "runners"):
        # the wheel carries real files (the source tree's links are resolved)
        mod = site / "anycastlb" / "saltext" / kind / "anycastlb_mod.py"
        assert mod.is_file() and not mod.is_symlink() and "__virtualname__" in mod.read_text()
    entry_points = next(site.glob("anycastlb-0.1.0.dist-info")) / "entry_points.txt"
    assert "[salt.loader]" in entry_points.read_text()
    assert "anycastlb.saltext:loader_dirs" in entry_points.read_text()

    again = _apply(make_minion_opts, tmp_path, campus_catalog, pillar)
    [(_, state)] = again.items()
    assert state["result"] is True and state["changes"] == {}, state
