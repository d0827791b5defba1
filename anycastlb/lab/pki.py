"""A self-made CA for the lab and the tests, made with the ``openssl`` command line.

Only for lab use: keys are small-lifetime EC keys written under a directory the caller
owns; nothing here is meant for production certificates.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _key(path: Path) -> str:
    _run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)
    return path.read_text()


@dataclass
class Leaf:
    """A leaf certificate and its key, in PEM."""

    cert: str
    key: str

    @property
    def bundle(self) -> str:
        """Certificate then key, as HAProxy loads it."""
        return self.cert.strip() + "\n" + self.key.strip() + "\n"


class LabCA:
    """A CA in ``directory`` that signs leaf certificates for host names."""

    def __init__(self, directory: str | Path, name: str = "anycastlb lab CA") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_path = self.dir / "ca.key"
        self.cert_path = self.dir / "ca.pem"
        self._n = 0
        if not self.cert_path.exists():
            _key(self.key_path)
            _run("openssl", "req", "-x509", "-new", "-key", str(self.key_path), "-days", "30", "-subj",
                 f"/CN={name}", "-out", str(self.cert_path))

    @property
    def cert(self) -> str:
        return self.cert_path.read_text()

    def issue(self, names: list[str], days: int = 7, key: str | None = None) -> Leaf:
        """A certificate for ``names`` (the first is the CN), with a fresh key unless ``key`` is given."""
        self._n += 1
        stem = self.dir / f"leaf{self._n}"
        key_path = Path(f"{stem}.key")
        if key is None:
            key = _key(key_path)
        else:
            key_path.write_text(key)
            key_path.chmod(0o600)
        ext = Path(f"{stem}.ext")
        ext.write_text("subjectAltName=" + ",".join(f"{'IP' if _is_ip(n) else 'DNS'}:{n}" for n in names) + "\n"
                       "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        csr = Path(f"{stem}.csr")
        _run("openssl", "req", "-new", "-key", str(key_path), "-subj", f"/CN={names[0]}", "-out", str(csr))
        _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert_path), "-CAkey", str(self.key_path),
             "-CAcreateserial", "-days", str(days), "-extfile", str(ext), "-out", f"{stem}.pem")
        return Leaf(cert=Path(f"{stem}.pem").read_text(), key=key)
