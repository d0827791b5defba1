"""Secrets through Salt: never in a state's changes, its test=True output or its comment.

Two masterless minions named lb1 share one temporary root: the first one's catalog sets a
BGP password (its secrets file writes it as ``0123yes`` plus quotes, so a YAML 1.1 reader
would have retyped a part of it), the second one's catalog no longer does. The real BIRD
renderer and ``bird -p -c`` run behind the state; the service control is a recorder
(nothing is reloaded: there is no BIRD to reload in this test).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb import minion

PASSWORD = "0123yes-Sekr1t'#"
needs_bird = pytest.mark.skipif(not shutil.which("bird"), reason="bird is not installed")


class Recorder:
    """Stands in for ServiceControl: runs nothing, says every daemon runs."""

    def __init__(self, mode: str | None = None, root: str = "/"):
        self.root = root

    def running(self, daemon: str) -> bool:
        return True

    def reload_or_start(self, daemon: str) -> str:
        return f"{daemon} reloaded"


@pytest.fixture(autouse=True)
def recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minion, "control_factory", Recorder)


def _catalog(src: Path, dst: Path, password: bool) -> Path:
    text = src.read_text()
    if password:
        text = text.replace("bgp:\n  asn: 64512", "bgp:\n  asn: 64512\n  password: fleet", 1)
        assert "password: fleet" in text
    dst.write_text(text)
    return dst


@pytest.fixture(scope="module")
def minions(tmp_path_factory: pytest.TempPathFactory, campus_catalog: Path, campus_secrets: Path,
            make_minion_opts: Any) -> Any:
    from saltfactories.utils.functional import Loaders

    d = tmp_path_factory.mktemp("secrets-minions")
    store = yaml.safe_load(campus_secrets.read_text())
    store["bgp_passwords"] = {"fleet": "PLACEHOLDER"}
    secrets = d / "secrets.yaml"
    # the value is written unquoted (fleet: 0123yes-...), as a person would write it
    secrets.write_text(yaml.safe_dump(store).replace("PLACEHOLDER", PASSWORD))
    with_pw = _catalog(campus_catalog, d / "with.yaml", True)
    without = _catalog(campus_catalog, d / "without.yaml", False)
    return (Loaders(make_minion_opts(d / "m1", "lb1", with_pw, secrets)),
            Loaders(make_minion_opts(d / "m2", "lb1", without, secrets)))


def _flat(ret: Any) -> str:
    return repr(ret.full_return)


@needs_bird
def test_password_reaches_bird_conf_but_no_output(minions: Any, tmp_path: Path) -> None:
    with_pw, _ = minions
    assert with_pw.pillar["anycastlb"]["secrets"]["bgp_passwords"] == {"fleet": PASSWORD}
    preview = with_pw.states.anycastlb.configured(name="bird", root=str(tmp_path), test=True)
    assert preview.result is None
    assert PASSWORD not in _flat(preview)
    assert '+    password "**********";' in preview.changes["diff"]["/etc/bird/bird.conf"]
    ret = with_pw.states.anycastlb.configured(name="bird", root=str(tmp_path))
    assert ret.result is True, ret.comment
    assert PASSWORD not in _flat(ret)
    assert f'password "{PASSWORD}";' in (tmp_path / "etc/bird/bird.conf").read_text()


@needs_bird
def test_removing_the_password_does_not_print_the_old_one(minions: Any, tmp_path: Path) -> None:
    with_pw, without = minions
    assert with_pw.states.anycastlb.configured(name="bird", root=str(tmp_path)).result is True
    preview = without.states.anycastlb.configured(name="bird", root=str(tmp_path), test=True)
    assert preview.result is None
    diff = preview.changes["diff"]["/etc/bird/bird.conf"]
    assert PASSWORD not in _flat(preview)
    assert '-    password "**********";' in diff and "holds a secret" in diff
    ret = without.states.anycastlb.configured(name="bird", root=str(tmp_path))
    assert ret.result is True, ret.comment
    assert PASSWORD not in _flat(ret)
    assert "password" not in (tmp_path / "etc/bird/bird.conf").read_text()
    # the execution module hides the secret file unless asked
    shown = with_pw.modules.anycastlb.render("bird")["bird"]["/etc/bird/bird.conf"]
    assert PASSWORD not in shown


# ------------------------------------------------------------------ a GPG-encrypted secrets file


@pytest.fixture(scope="module")
def gpg_home() -> Any:
    """A throwaway GnuPG home with one passphrase-less key (short path: gpg-agent's socket)."""
    import subprocess
    import tempfile

    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    home = tempfile.mkdtemp(prefix="aclb-gpg-", dir="/tmp")
    try:
        subprocess.run(["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                        "--quick-gen-key", "anycastlb test <gpg@example.org>", "future-default", "default",
                        "never"], check=True, capture_output=True, timeout=60)
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def _encrypt(home: str, text: str) -> str:
    import subprocess
    return subprocess.run(["gpg", "--homedir", home, "--batch", "--trust-model", "always", "--armor",
                           "--encrypt", "-r", "gpg@example.org"], input=text, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def _block(text: str) -> str:
    return "|\n" + "".join(f"      {line}\n" for line in text.strip().splitlines())


@needs_bird
def test_an_encrypted_secret_reaches_the_rendered_config(tmp_path: Path, gpg_home: str, campus_catalog: Path,
                                                        campus_secrets: Path, make_minion_opts: Any) -> None:
    from saltfactories.utils.functional import Loaders

    plain = yaml.safe_load(campus_secrets.read_text())["certificates"]["campus-wildcard"]
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(
        "#!yaml|gpg\n"
        "bgp_passwords:\n"
        f"  fleet: {_block(_encrypt(gpg_home, PASSWORD))}"
        "certificates:\n"
        "  campus-wildcard:\n"
        f"    cert: {_block(plain['cert'])}"
        f"    key: {_block(_encrypt(gpg_home, plain['key']))}")
    assert PASSWORD not in secrets.read_text() and "PRIVATE KEY" not in secrets.read_text()
    catalog = _catalog(campus_catalog, tmp_path / "catalog.yaml", True)
    loaders = Loaders(make_minion_opts(tmp_path / "m", "lb1", catalog, secrets, gpg_keydir=gpg_home))
    values = loaders.pillar["anycastlb"]["secrets"]
    assert values["bgp_passwords"] == {"fleet": PASSWORD}
    assert values["certificates"]["campus-wildcard"]["key"].strip() == plain["key"].strip()
    shown = loaders.modules.anycastlb.render(show_secrets=True)
    assert f'password "{PASSWORD}";' in shown["bird"]["/etc/bird/bird.conf"]
    assert plain["key"].strip() in shown["haproxy"]["/etc/haproxy/certs/anycastlb-campus-wildcard.pem"]
    ret = loaders.states.anycastlb.configured(name="bird", root=str(tmp_path / "root"))
    assert ret.result is True, ret.comment
    assert PASSWORD not in _flat(ret)


def test_an_encrypted_file_is_refused_outside_the_master(tmp_path: Path) -> None:
    from anycastlb.errors import CatalogRefused
    from anycastlb.secrets import load_secrets

    path = tmp_path / "secrets.yaml"
    path.write_text("#!yaml|gpg\nbgp_passwords:\n  fleet: |\n    -----BEGIN PGP MESSAGE-----\n    x\n"
                    "    -----END PGP MESSAGE-----\n")
    with pytest.raises(CatalogRefused, match="decrypted by the Salt master"):
        load_secrets(path)
    with pytest.raises(CatalogRefused, match="could not be decrypted") as err:
        load_secrets(path, decrypt=lambda store: store)  # a key the master does not hold
    assert err.value.errors[0].key == "bgp_passwords.fleet"
