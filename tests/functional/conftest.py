"""Salt loader fixtures: a masterless minion whose pillar comes from the repo's ext_pillar."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def minion_opts(root: Path, minion_id: str, catalog: Path, secrets: Path | None, **extra: Any) -> dict[str, Any]:
    """Minion opts that load the repo's modules, states and ext_pillar straight from the checkout."""
    import salt.config

    opts = salt.config.minion_config(None)
    conf: dict[str, Any] = {"catalog": str(catalog)}
    if secrets:
        conf["secrets"] = str(secrets)
    opts.update({
        "id": minion_id, "root_dir": str(root), "cachedir": str(root / "cache"),
        "pki_dir": str(root / "pki"), "extension_modules": str(root / "extmods"), "sock_dir": str(root / "sock"), "log_file": str(root / "minion.log"),
        "file_client": "local",
        # the anycastlb states, and the example site top file (docs/examples/salt/top.sls)
        "file_roots": {"base": [str(REPO / "salt"), str(REPO / "docs" / "examples" / "salt")]},
        "pillar_roots": {"base": [str(root / "pillar")]},
        # one option per loader type: with module_dirs: [REPO] the repo root becomes an
        # execution-module dir, and the repo's pillar/ (example pillar roots) shadows _pillar
        "module_dirs": [str(REPO / "_modules")],
        "states_dirs": [str(REPO / "_states")],
        "pillar_dirs": [str(REPO / "_pillar")],
        "ext_pillar": [{"anycastlb": conf}],
        "grains_cache": False, "enable_fqdns_grains": False, "enable_gpu_grains": False,
    })
    opts.update(extra)
    (root / "pillar").mkdir(parents=True, exist_ok=True)
    return opts


@pytest.fixture(scope="module")
def catalog_copy(tmp_path_factory: pytest.TempPathFactory, campus_catalog: Path) -> Path:
    """A copy of the campus catalog that a test module may edit."""
    dst = tmp_path_factory.mktemp("catalog") / "campus.yaml"
    shutil.copy(campus_catalog, dst)
    return dst


@pytest.fixture(scope="session")
def make_minion_opts():
    """:func:`minion_opts` as a fixture (test modules here are not a package)."""
    return minion_opts

