"""anycastlb as a Salt extension: the loader finds its modules through an entry point.

``pyproject.toml`` declares::

    [project.entry-points."salt.loader"]
    anycastlb = "anycastlb.saltext:loader_dirs"

so a ``pip install anycastlb`` into the Python that runs Salt (``salt-pip install
anycastlb`` for a onedir install) makes the ext_pillar, the execution and state
modules and the runner known to every Salt process, with no ``module_dirs`` and no
``saltutil.sync_all``. The directories below are the repository's top-level
``_modules``, ``_states``, ``_pillar`` and ``_runners`` (symbolic links in the source
tree, copied into the wheel), so ``saltutil.sync_all`` users and entry-point users
run the same files. Nothing here imports Salt.
"""

from __future__ import annotations

from pathlib import Path

#: Salt loader type → the directory of this package that holds its modules.
LOADER_TYPES = ("modules", "states", "pillar", "runners")


def loader_dirs() -> dict[str, list[str]]:
    """The module directories per Salt loader type (Salt's new-style ``salt.loader`` entry point).

    CLI Example (what the loader sees):

    .. code-block:: bash

        python -c 'from anycastlb.saltext import loader_dirs; print(loader_dirs())'
    """
    here = Path(__file__).resolve().parent
    return {kind: [str(here / kind)] for kind in LOADER_TYPES if (here / kind).is_dir()}
