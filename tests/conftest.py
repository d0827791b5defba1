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


class CatalogRepo:
    """A bare catalog repository (``bare``) whose first commit is ``text`` as ``campus.yaml``, and an
    operator's clone (``work``) that :meth:`push` commits and pushes from."""

    GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]

    def __init__(self, root: Path, text: str) -> None:
        self.bare, self.work = root / "catalog.git", root / "operator"
        self.git("init", "--quiet", "--bare", str(self.bare))
        self.git("clone", "--quiet", str(self.bare), str(self.work))
        self.first = self.push(text, "first")

    def git(self, *args: str, cwd: Path | None = None) -> str:
        import subprocess

        return subprocess.run([*self.GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    def push(self, text: str, message: str) -> str:
        """Commit ``text`` as campus.yaml and push it to main; → the commit id."""
        (self.work / "campus.yaml").write_text(text)
        self.git("add", "-A", cwd=self.work)
        self.git("commit", "--quiet", "-m", message, cwd=self.work)
        self.git("push", "--quiet", "origin", "HEAD:main", cwd=self.work)
        return self.git("rev-parse", "HEAD", cwd=self.work)

    def clone(self, dest: Path) -> Path:
        """A checkout of the repository (as a master's catalog work tree)."""
        self.git("clone", "--quiet", str(self.bare), str(dest))
        return dest


@pytest.fixture(scope="session")
def catalog_repo():
    """:class:`CatalogRepo` as a fixture: ``catalog_repo(root, text)``."""
    return CatalogRepo


@pytest.fixture(autouse=True)
def applied_model_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model record the anycastlb states keep (``/var/lib/anycastlb/applied-model.json`` on a
    node) goes to a temporary file here, never to this machine's /var/lib."""
    from anycastlb import minion

    path = tmp_path / "applied-model.json"
    monkeypatch.setattr(minion, "APPLIED_MODEL", str(path))
    return path
