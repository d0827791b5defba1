"""
anycastlb ext_pillar: each minion's slice of the service catalog.

.. code-block:: yaml

    # /etc/salt/master.d/anycastlb.conf
    ext_pillar:
      - anycastlb:
          catalog: /srv/anycastlb/catalog        # a file or a directory of *.yaml
          secrets: /etc/anycastlb/secrets.yaml   # optional; kept outside git
          service_mode: direct                   # optional: direct | systemd
          acme_store: /etc/anycastlb/acme        # optional: the ACME issuer's certificates (0700, root)
          acme_directory: https://ca.example.org/dir   # optional: another ACME directory than the catalog's
          acme_ca: /etc/anycastlb/acme-ca.pem    # optional: the CA file to trust for that directory

A minion the catalog names gets ``anycastlb:`` = its node model (``anycastlb show
CATALOG NODE --json``) with ``secrets`` holding only the secret values it uses.
Any other minion gets nothing. A refused catalog fails the pillar of the
catalog's own nodes with every lint message (Salt puts them in ``_errors`` and
refuses to run states there); the master's other minions get nothing from this
ext_pillar and keep working, and the refusal is logged once on the master.
The work is done by :mod:`anycastlb.pillar`.

The file is not called ``anycastlb.py`` on purpose: Salt puts a module's own
directory on ``sys.path`` while loading it, and a file of the package's name would
then shadow the ``anycastlb`` package. Salt knows it by its virtual name, ``anycastlb``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__virtualname__ = "anycastlb"

try:
    from anycastlb.pillar import node_pillar

    _IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - depends on the master's Python environment
    _IMPORT_ERROR = str(exc)


def __virtual__() -> str | tuple[bool, str]:
    if _IMPORT_ERROR:
        return False, f"the anycastlb package is not importable on the master: {_IMPORT_ERROR}"
    return __virtualname__


def _gpg_decrypt(store: dict[str, Any]) -> Any:
    """Decrypt the PGP messages among the store's values with Salt's own GPG renderer (the
    master's ``gpg_keydir``), the convention of ``#!yaml|gpg`` pillar files."""
    import salt.loader  # pylint: disable=import-outside-toplevel

    return salt.loader.render(__opts__, __salt__)["gpg"](store)


def ext_pillar(minion_id: str, pillar: dict[str, Any], catalog: str = "", secrets: str | None = None,
               service_mode: str | None = None, acme_store: str | None = None,
               acme_directory: str | None = None, acme_ca: str | None = None, repo: str | None = None,
               live: str | None = None) -> dict[str, Any]:
    """The minion's ``anycastlb`` pillar; for the catalog's nodes raises ``CatalogRefused`` on a bad catalog.

    A secrets file starting with ``#!yaml|gpg`` has its values decrypted here, on the master.
    ``acme_directory`` and ``acme_ca`` are the renewal runner's (``salt-run anycastlb.renew``), not the pillar's;
    ``repo`` and ``live`` the staged catalog's (``salt-run anycastlb.checkout``; the pillar reads ``catalog``,
    which the switch points at the new commit).
    """
    return node_pillar(minion_id, catalog, secrets=secrets, service_mode=service_mode, report=log.error,
                       decrypt=_gpg_decrypt, acme_store=acme_store)
