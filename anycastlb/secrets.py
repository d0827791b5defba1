"""The secrets store: TLS certificates and BGP passwords, kept apart from the catalog.

A YAML file (or the equivalent pillar data)::

    certificates:
      campus-wildcard: {cert: "-----BEGIN CERTIFICATE-----...", key: "-----BEGIN PRIVATE KEY-----..."}
    bgp_passwords:
      fleet: "s3cret"
    acme_eab:                 # optional: HMAC keys of ACME External Account Bindings (the issuer only)
      ca-eab: "base64url-hmac-key"

The catalog only names secrets; :func:`slice_for` hands a node the ones it uses.

Every scalar is read as the text it is written as: no YAML 1.1 retyping (``0123``
stays ``"0123"``, not 83; ``yes`` stays ``"yes"``, not True). A file whose first line
is ``#!yaml|gpg`` follows Salt's GPG renderer convention: values may be PGP
messages, decrypted on the Salt master by the ext_pillar (``docs/salt.md``); this
module only reads the text.

Secret values never appear in diffs, state changes or logs: :data:`MASK` stands for
them (:func:`mask`, and each daemon's ``redact``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import yaml

from .errors import CatalogError, CatalogRefused


#: What stands for a secret value in any output (as Salt masks pillar values).
MASK = "**********"
#: The first line that marks a secrets file for Salt's GPG renderer.
GPG_SHEBANG = "#!yaml|gpg"


class TextLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """A safe loader that resolves no implicit type: every plain scalar stays the text written."""


TextLoader.yaml_implicit_resolvers = {}


def _refuse(path: Any, message: str, line: int | None = None, key: str = "") -> CatalogRefused:
    return CatalogRefused([CatalogError(str(path), line, "secrets", "", key, message)])


def parse_secrets(text: str, path: str = "secrets") -> dict[str, Any]:
    """The secrets store from YAML text, every value kept as written.

    A malformed file is refused with its line, never with the text around the error
    (that text may be a secret).
    """
    try:
        data = yaml.load(text, Loader=TextLoader)  # noqa: S506 - a SafeLoader without type resolution
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _refuse(path, f"not valid YAML: {exc.problem or exc.context}",
                      mark.line + 1 if mark else None) from None
    except yaml.YAMLError:
        raise _refuse(path, "not valid YAML") from None
    if data in (None, ""):
        data = {}
    if not isinstance(data, dict):
        raise _refuse(path, "must be a mapping with certificates and bgp_passwords")
    return _checked(normalise({k: (v or {}) for k, v in data.items()}), path)


def _checked(store: dict[str, Any], path: str) -> dict[str, Any]:
    """``store`` if every certificate has the texts cert and key and every password is a text."""
    for name, entry in store["certificates"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("cert", "key")):
            raise _refuse(path, "must be a mapping with the texts 'cert' and 'key'", key=f"certificates.{name}")
    for section in ("bgp_passwords", "acme_eab"):
        for name, value in store.get(section, {}).items():
            if not isinstance(value, str):
                raise _refuse(path, "must be a string", key=f"{section}.{name}")
    return store


#: Decrypts the values of a parsed ``#!yaml|gpg`` store (the ext_pillar passes Salt's GPG renderer).
Decrypt = Callable[[dict[str, Any]], Any]
_PGP = "-----BEGIN PGP MESSAGE-----"


def load_secrets(path: str | os.PathLike[str], decrypt: Decrypt | None = None) -> dict[str, Any]:
    """Read a secrets file; a missing or malformed file is refused with its name.

    A file whose first line is ``#!yaml|gpg`` holds PGP-encrypted values: it is read
    as text here, then ``decrypt`` (Salt's GPG renderer, on the master) decrypts them.
    Without ``decrypt`` such a file is refused: its values are decrypted on the Salt
    master only. A value that stays encrypted is refused by name.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise _refuse(path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _refuse(path, "not UTF-8 text") from None
    store = parse_secrets(text, str(path))
    if not text.startswith(GPG_SHEBANG):
        return store
    if decrypt is None:
        raise _refuse(path, f"encrypted ({GPG_SHEBANG}): its values are decrypted by the Salt master's "
                            "ext_pillar only")
    try:
        store = normalise(decrypt(store))
    except Exception as exc:  # pylint: disable=broad-except  # Salt's renderer errors name no secret
        raise _refuse(path, f"cannot decrypt: {type(exc).__name__}") from None
    for section in ("certificates", "bgp_passwords"):
        for name, value in store[section].items():
            if _PGP in repr(value):
                raise _refuse(path, "could not be decrypted with the master's GPG keys (gpg_keydir)",
                              key=f"{section}.{name}")
    return _checked(store, str(path))


def secret_values(store: Mapping[str, Any]) -> list[str]:
    """Every value that must never be shown: passwords and private keys (longest first)."""
    store = normalise(store)
    out = {str(v) for v in store["bgp_passwords"].values()}
    out |= {str(v) for v in store.get("acme_eab", {}).values()}
    for entry in store["certificates"].values():
        if isinstance(entry, dict) and entry.get("key"):
            key = str(entry["key"])
            out.add(key.strip())
            out.update(line.strip() for line in key.splitlines() if len(line.strip()) >= 16)
    return sorted((v for v in out if len(v) >= 4), key=len, reverse=True)


def mask(value: Any, store: Mapping[str, Any] | None) -> Any:
    """``value`` (text, or a dict/list of them) with every secret value of ``store`` replaced by
    :data:`MASK`. Values shorter than 4 characters are left alone (they would mask ordinary
    words); the daemons' own ``redact`` masks those where they are written."""
    values = secret_values(store) if store else []
    if not values:
        return value

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for s in values:
                v = v.replace(s, MASK)
            return v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v
    return walk(value)


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the known sections, as plain dicts (``acme_eab`` only when present)."""
    out = {"certificates": dict(data.get("certificates") or {}),
           "bgp_passwords": dict(data.get("bgp_passwords") or {})}
    if data.get("acme_eab"):
        out["acme_eab"] = dict(data["acme_eab"])
    return out


def slice_for(names: Mapping[str, Any], store: Mapping[str, Any]) -> dict[str, Any]:
    """The secret values a node uses, given the names in its model."""
    store = normalise(store)
    return {"certificates": {n: store["certificates"][n] for n in names.get("certificates", [])
                             if n in store["certificates"]},
            "bgp_passwords": {n: store["bgp_passwords"][n] for n in names.get("bgp_passwords", [])
                              if n in store["bgp_passwords"]}}
