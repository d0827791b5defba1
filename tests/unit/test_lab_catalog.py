"""The lab reads a catalog through the loader and the compiler, as Salt does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anycastlb.lab import catalog as cat

CAMPUS = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"


@pytest.fixture
def split_catalog(tmp_path: Path) -> Path:
    """The campus catalog as a directory, its nodes in a subdirectory, imap's backends a list of mappings."""
    data = yaml.safe_load(CAMPUS.read_text())
    nodes = data.pop("nodes")
    imap = data["services"]["imap"]
    imap["backends"] = [{name: spec} for name, spec in imap["backends"].items()]
    (tmp_path / "site" / "nodes").mkdir(parents=True)
    (tmp_path / "site" / "catalog.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "site" / "nodes" / "campus.yaml").write_text(yaml.safe_dump({"nodes": nodes}, sort_keys=False))
    return tmp_path / "site"


def test_a_directory_is_read_recursively_like_the_compiler_does(split_catalog: Path) -> None:
    split, whole = cat.load(split_catalog), cat.load(CAMPUS)
    assert split.nodes == whole.nodes and list(split.nodes)[:3] == ["salt", "rr1", "rr2"]
    assert split.peers == whole.peers and (split.asn, split.bfd, split.vip_pools) == (whole.asn, whole.bfd,
                                                                                       whole.vip_pools)
    assert [h.name for h in split.with_role("route-reflector")] == ["rr1", "rr2"]


def test_list_of_mappings_backends_give_the_same_stand_ins(split_catalog: Path) -> None:
    external, ports = cat.stand_ins(split_catalog)
    assert external == [("mail1", "203.0.113.25"), ("mail2", "203.0.113.26")]
    assert ports["mail1"] == ([143, 993], []) and ports["kdc1"] == ([88, 464], [88, 464])
    assert (external, ports) == cat.stand_ins(CAMPUS)


def test_a_refused_catalog_builds_no_lab(tmp_path: Path) -> None:
    data = yaml.safe_load(CAMPUS.read_text())
    data["services"]["imap"]["cluster"] = "nosuch"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(cat.LabCatalogError, match="catalog refused: .*imap.*cluster"):
        cat.load(bad, strict=True)
    with pytest.raises(cat.LabCatalogError, match="catalog refused: .*imap.*cluster"):
        cat.stand_ins(bad)  # what lab up reads first


def test_a_running_lab_still_reads_its_topology_from_a_refused_catalog(tmp_path: Path) -> None:
    """A test pushes a refused catalog into a running lab: the lab still finds its salt-master."""
    data = yaml.safe_load(CAMPUS.read_text())
    data["services"]["imap"]["cluster"] = "nosuch"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    lenient, good = cat.load(bad), cat.load(CAMPUS)
    assert [h.name for h in lenient.with_role("salt-master")] == ["salt"]
    assert {n: (h.address, h.address6) for n, h in lenient.nodes.items()} == \
        {n: (h.address, h.address6) for n, h in good.nodes.items()}
    assert lenient.peers == good.peers
