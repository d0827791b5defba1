"""Certificate bundles checked by openssl before they go live (anycastlb.certs), on a self-made CA."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from anycastlb.certs import cert_info, check_bundle, runtime_payload, split_bundle
from anycastlb.lab.pki import LabCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA(tmp_path_factory.mktemp("ca"))


def test_a_good_bundle_passes_and_its_facts_are_read(ca: LabCA) -> None:
    leaf = ca.issue(["www.example.org", "example.org"], days=7)
    assert check_bundle(leaf.bundle) == []
    info = cert_info(leaf.bundle)
    assert info.subject == "CN=www.example.org"
    assert dt.timedelta(days=6) < info.remaining() <= dt.timedelta(days=7)
    assert info.serial == cert_info(leaf.cert).serial and len(info.serial) >= 8


def test_two_issues_have_two_serials(ca: LabCA) -> None:
    assert cert_info(ca.issue(["a.example.org"]).cert).serial != cert_info(ca.issue(["a.example.org"]).cert).serial


def test_a_key_of_another_certificate_is_refused_without_quoting_it(ca: LabCA) -> None:
    one, other = ca.issue(["www.example.org"]), ca.issue(["www.example.org"])
    problems = check_bundle(one.cert + other.key)
    assert problems == ["the private key does not match the certificate"]
    assert "PRIVATE" not in repr(problems)


def test_an_expired_certificate_and_a_bundle_without_key_are_refused(ca: LabCA) -> None:
    leaf = ca.issue(["www.example.org"], days=1)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    assert "expired" in check_bundle(leaf.bundle, now=later)[0]
    assert check_bundle(leaf.cert) == ["the bundle holds 0 private keys (one is expected)"]
    assert check_bundle("garbage") == ["no certificate in the bundle"]


def test_the_runtime_payload_has_no_empty_line(ca: LabCA) -> None:
    leaf = ca.issue(["www.example.org"])
    spaced = leaf.cert + "\n\n" + ca.cert + "\n\n" + leaf.key
    payload = runtime_payload(spaced)
    assert "\n\n" not in payload and payload.endswith("\n")
    assert split_bundle(payload) == split_bundle(spaced)
