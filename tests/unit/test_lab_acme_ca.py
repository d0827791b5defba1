"""The lab's ACME CA wiring (anycastlb/lab/acme_ca.py): when it is started, where it lives, what it resolves
and what the master and the clients are told (tests/integration/test_acme_lab.py runs it)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from anycastlb.compiler import compile_catalog
from anycastlb.lab import acme_ca

FLEET = Path(__file__).resolve().parents[1] / "data" / "acme-fleet.yaml"
CAMPUS = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"


def test_only_a_catalog_with_an_acme_section_gets_the_ca() -> None:
    assert acme_ca.wanted(FLEET) is True
    assert acme_ca.wanted(CAMPUS) is False


def test_the_ca_takes_a_free_client_net_address() -> None:
    assert acme_ca.address([]) == ("acme-ca", "203.0.113.250")
    assert acme_ca.address([("mail1", "203.0.113.250"), ("x", "203.0.113.249")]) == ("acme-ca", "203.0.113.248")


def test_every_http_name_resolves_to_its_services_first_ipv4_vip() -> None:
    assert acme_ca.names(compile_catalog(FLEET)) == {"www.example.org": "192.0.2.10", "example.org": "192.0.2.10",
                                                     "intra.example.org": "192.0.2.11"}
    campus = acme_ca.names(compile_catalog(CAMPUS))
    assert campus["www.example.org"] == "192.0.2.10" and not any("*" in n for n in campus)


def test_the_master_and_the_clients_are_told_only_when_the_ca_runs(tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    lab = SimpleNamespace(meta={"acme_ca": {"directory": "https://203.0.113.250:14000/dir", "ca": "/x/ca.pem",
                                            "root": str(root)}})
    assert acme_ca.master_options(lab) == {"acme_directory": "https://203.0.113.250:14000/dir",  # type: ignore[arg-type]
                                           "acme_ca": "/x/ca.pem"}
    assert acme_ca.trust(lab) is None  # type: ignore[arg-type]  # not fetched yet
    root.write_text("-----BEGIN CERTIFICATE-----\n")
    assert acme_ca.trust(lab) == str(root)  # type: ignore[arg-type]
    bare = SimpleNamespace(meta={})
    assert acme_ca.master_options(bare) == {} and acme_ca.trust(bare) is None  # type: ignore[arg-type]
