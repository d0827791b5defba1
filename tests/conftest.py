"""Fixtures shared by every test level."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def campus_catalog() -> Path:
    """The project's copy of the normative campus catalog (do not modify: copy it first)."""
    return REPO / "anycastlb" / "examples" / "campus.yaml"


@pytest.fixture(scope="session")
def campus_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets file for the campus catalog holding a freshly generated self-signed certificate."""
    import subprocess

    import yaml

    d = tmp_path_factory.mktemp("secrets")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=*.example.org", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    path = d / "secrets.yaml"
    path.write_text(yaml.safe_dump({"certificates": {"campus-wildcard": {
        "cert": (d / "cert.pem").read_text(), "key": (d / "key.pem").read_text()}},
        "bgp_passwords": {"unused": "never handed to any minion"}}))
    path.chmod(0o600)
    return path
