"""The salt-master node's firewall on a shared master: minion networks and salt-api (issue 18).

Rendered and passed through ``nft -c -f``; every refused value names file:line, object and key.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import stage_and_check
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import nftables

CAMPUS_TEXT = (Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml").read_text()
SALT = 'salt: {address: 198.51.100.2, address6: "2001:db8:100::2", roles: [salt-master]}'
needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft -c needs root and nft")


def catalog(tmp_path: Path, salt_line: str) -> Path:
    assert SALT in CAMPUS_TEXT
    p = tmp_path / "catalog.yaml"
    p.write_text(CAMPUS_TEXT.replace(SALT, salt_line, 1))
    return p


def rules(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["comment"]: r for r in model["firewall"]["rules"]}


SHARED = SALT[:-1] + (', salt: {minion_networks: [10.20.0.0/16, "2001:db8:300::/48"],'
                      ' api: {port: 8443, sources: [203.0.113.0/24]}}}')


def test_minion_networks_and_salt_api_are_opened_on_the_master_only(tmp_path):
    fleet = compile_catalog(catalog(tmp_path, SHARED))
    master = rules(fleet.nodes["salt"])
    assert master["salt from minion networks"]["ports"] == [4505, 4506]
    assert master["salt from minion networks"]["sources"] == ["10.20.0.0/16", "2001:db8:300::/48"]
    assert master["salt-api"]["ports"] == [8443] and master["salt-api"]["sources"] == ["203.0.113.0/24"]
    assert master["salt from management and minions"]["ports"] == [4505, 4506]
    for other in ("lb1", "rr1", "mon1"):
        assert not {"salt from minion networks", "salt-api"} & set(rules(fleet.nodes[other]))
    text = nftables.render(fleet.nodes["salt"], {}, "/")[0].content
    assert ('ip saddr 10.20.0.0/16 ip daddr 198.51.100.2 tcp dport { 4505, 4506 } accept comment '
            '"salt from minion networks"') in text
    assert ('ip6 saddr 2001:db8:300::/48 ip6 daddr 2001:db8:100::2 tcp dport { 4505, 4506 } accept comment '
            '"salt from minion networks"') in text
    assert 'ip saddr 203.0.113.0/24 ip daddr 198.51.100.2 tcp dport 8443 accept comment "salt-api"' in text


def test_without_the_key_nothing_more_is_opened_and_salt_api_defaults_to_management(tmp_path):
    plain = rules(compile_catalog(catalog(tmp_path, SALT)).nodes["salt"])
    assert "salt from minion networks" not in plain and "salt-api" not in plain
    api = rules(compile_catalog(catalog(tmp_path, SALT[:-1] + ", salt: {api: {}}}")).nodes["salt"])
    assert api["salt-api"]["ports"] == [8000]
    assert api["salt-api"]["sources"] == ["198.51.100.0/24", "2001:db8:100::/64"]  # management


@needs_nft
def test_master_ruleset_passes_nft_check(tmp_path):
    ok, out = stage_and_check(nftables.SPEC, compile_catalog(catalog(tmp_path, SHARED)).nodes["salt"], {}, "/")
    assert ok, out


@pytest.mark.parametrize("line, message", [
    (SALT[:-1] + ", salt: {minion_networks: [everyone]}}", "'everyone' is not a network prefix"),
    (SALT[:-1] + ", salt: {minion_networks: [10.0.0.0/8], bogus: 1}}", "bogus"),
    (SALT[:-1] + ", salt: {api: {port: 70000}}}", "salt.api.port"),
])
def test_bad_values_are_refused_naming_file_line_node_and_key(tmp_path, line, message):
    path = catalog(tmp_path, line)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(path)
    text = str(exc.value)
    lineno = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if s.lstrip().startswith("salt: {"))
    assert f"{path}:{lineno}: node 'salt'" in text and message in text, text


def test_salt_key_only_on_the_salt_master(tmp_path):
    lb1 = 'lb1:  {address: 198.51.100.21, address6: "2001:db8:100::21"}'
    p = tmp_path / "catalog.yaml"
    p.write_text(CAMPUS_TEXT.replace(lb1, lb1[:-1] + ", salt: {minion_networks: [10.0.0.0/8]}}", 1))
    with pytest.raises(CatalogRefused, match="node 'lb1'.*only a node with role salt-master"):
        compile_catalog(p)
