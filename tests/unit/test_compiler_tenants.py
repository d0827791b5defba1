"""Issue 11 item 6: tenants keep to their lanes; every refusal names the claim's file and the root file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused

ROOT = Path(__file__).resolve().parents[2]
TENANTS = ROOT / "tests" / "data" / "tenants"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    dst = tmp_path / "catalog"
    shutil.copytree(TENANTS, dst)
    return dst


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def line(path: Path, needle: str) -> int:
    return next(i for i, x in enumerate(path.read_text().splitlines(), 1) if needle in x)


def refused(tree: Path) -> list[str]:
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(tree)
    return [str(e) for e in exc.value.errors]


def test_the_university_compiles_with_owners(tree):
    fleet = compile_catalog(tree)
    assert fleet.owners["library"]["services"] == ["opac", "repository"]
    assert fleet.owners["dns"]["vips"] == ["192.0.2.53", "2001:db8:1::53"]
    assert fleet.owners["(root)"]["files"] == [str(tree / "fleet.yaml")]


@pytest.mark.parametrize("section", ["nodes: {evil: {address: 198.51.100.99}}", "vip_pools: [203.0.113.0/24]",
                                     "management: [0.0.0.0/1]", "defaults: {backend_port: 9999}",
                                     "tenants: {x: {files: [none/*.yaml]}}", "bgp: {hold: 3s}"])
def test_tenant_file_may_not_define_fleet_sections(tree, section):
    lib = tree / "library" / "services.yaml"
    lib.write_text(lib.read_text() + section + "\n")
    key = section.split(":")[0]
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:{line(lib, key + ':')}: tenant 'library', key '{key}'") and "fleet-wide" in e
               and f"{tree / 'fleet.yaml'}:" in e for e in errors), errors


CLAIMS = [
    ('vip: 192.0.2.66', 'vip: 192.0.2.10', "vip: 192.0.2.10", "vip[0]", "outside the VIP prefixes"),
    ('apache: {server_name: repository.library.example.org}', 'apache: {server_name: www.example.org}',
     "server_name: www", "apache.server_name", "outside the host names"),
    ('aliases: ["*.opac.library.example.org"]', 'aliases: ["*.example.org"]', "aliases:", "apache.aliases[0]",
     "outside the host names"),
    ('    backends: [lib1, lib2]\n    apache: {server_name: repository', '    backends: [web1]\n    apache: '
     '{server_name: repository', "backends: [web1]", "backends.web1", "is not one tenant 'library'"),
    ('    apache: {server_name: repository', '    route: {hosts: [www.example.org]}\n    apache: {server_name: '
     'repository', "route: {hosts", "route.hosts[0]", "outside the host names"),
    ('tls: {certificate: library-tls}', 'tls: {certificate: campus-wildcard}', "certificate:", "tls.certificate",
     "is not one tenant 'library'"),
    ('    backends: [lib1, lib2]\n    apache: {server_name: repository', '    backends: [lib1, lib2]\n    '
     'allow_node_ports: [22]\n    apache: {server_name: repository', "allow_node_ports", "allow_node_ports",
     "only root files"),
]


@pytest.mark.parametrize("old,new,needle,key,words", CLAIMS, ids=[c[3] for c in CLAIMS])
def test_claims_outside_the_lanes_name_both_files(tree, old, new, needle, key, words):
    lib = tree / "library" / "services.yaml"
    edit(lib, old, new)
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:{line(lib, needle)}: service ") and f"key {key!r}" in e and words in e
               and f"declared in {tree / 'fleet.yaml'}:" in e for e in errors), errors


def test_cluster_outside_the_lanes(tree):
    edit(tree / "fleet.yaml", "  edge: {nodes: [lb1, lb2]}", "  edge: {nodes: [lb1]}\n  core: {nodes: [lb2]}")
    lib = tree / "library" / "services.yaml"
    edit(lib, "    vip: 192.0.2.66\n    cluster: edge", "    vip: 192.0.2.66\n    cluster: core")
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:{line(lib, 'cluster: core')}: service 'repository', key 'cluster'")
               and "cluster 'core' is not one tenant 'library'" in e for e in errors), errors


def test_template_of_another_tenant(tree):
    dns = tree / "dns" / "resolvers.yaml"
    dns.write_text(dns.read_text() + "templates:\n  dns-web: {mode: http}\n")
    lib = tree / "library" / "services.yaml"
    edit(lib, "    extends: web              # central IT's template", "    extends: dns-web")
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:{line(lib, 'extends: dns-web')}: template 'lib-web', key 'extends'")
               and "belongs to tenant 'dns'" in e and str(dns) in e for e in errors), errors


def test_root_service_may_not_extend_a_tenant_template(tree):
    root = tree / "fleet.yaml"
    edit(root, "  www:\n    extends: web", "  www:\n    extends: lib-web")
    errors = refused(tree)
    assert any(e.startswith(f"{root}:{line(root, 'extends: lib-web')}: service 'www', key 'extends'")
               and "belongs to tenant 'library'" in e for e in errors), errors


def test_file_claimed_by_two_tenants(tree):
    edit(tree / "fleet.yaml", "    files: [dns/*.yaml]", "    files: [dns/*.yaml, library/*]")
    errors = refused(tree)
    lib = tree / "library" / "services.yaml"
    assert any(e.startswith(f"{lib}: tenant 'dns', key 'files'") and "dns, library" in e for e in errors), errors


def test_two_services_one_server_name_on_one_backend_port(tree):
    lib = tree / "library" / "services.yaml"
    edit(lib, "apache: {server_name: repository.library.example.org}",
         "apache: {server_name: catalogue.library.example.org}")
    edit(lib, "    ports: [80, 443]\n", "    ports: [80, 443]\n    backend_port: 8080\n")
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:{line(lib, 'server_name: catalogue.library.example.org}')}: service "
                            "'repository', key 'apache.server_name'")
               and "already claimed by service 'opac'" in e for e in errors), errors


def test_owners_cli_json_and_text(tree):
    r = subprocess.run([sys.executable, "-m", "anycastlb.cli", "owners", str(tree), "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    owners = json.loads(r.stdout)
    assert owners["library"]["files"] == [str(tree / "library" / "services.yaml")]
    assert owners["library"]["lanes"]["vip_prefixes"] == ["192.0.2.64/27", "2001:db8:1::40/124"]
    t = subprocess.run([sys.executable, "-m", "anycastlb.cli", "owners", str(tree)], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0 and f"tenant library (declared in {tree / 'fleet.yaml'}:" in t.stdout
    assert "  services: opac, repository" in t.stdout


def test_a_node_by_its_address_is_still_that_node(tree):
    lib = tree / "library" / "services.yaml"
    edit(lib, "    backends: [lib1, lib2]\n    apache: {server_name: repository",
         "    backends: {lib1: {}, sneaky: {address: 198.51.100.31}}\n    apache: {server_name: repository")
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:") and "key 'backends.sneaky'" in e and "node 'web1' is not one tenant" in e
               for e in errors), errors


def test_raw_haproxy_directives_only_from_root_files(tree):
    """Issue 19 item 3: the escape hatch is central IT's alone; a tenant's raw directive is refused."""
    lib = tree / "library" / "services.yaml"
    edit(lib, "    apache: {server_name: repository.library.example.org}",
         "    apache: {server_name: repository.library.example.org}\n"
         "    haproxy: {raw: {backend: [\"http-request deny\"]}}")
    errors = refused(tree)
    assert any(e.startswith(f"{lib}:") and "service 'repository', key 'haproxy.raw'" in e
               and "only in root files" in e and "tenant 'library'" in e for e in errors), errors
    # the same directive in a root file (central IT's www) is accepted and rendered
    edit(lib, "\n    haproxy: {raw: {backend: [\"http-request deny\"]}}", "")
    root = tree / "fleet.yaml"
    edit(root, "    apache: {server_name: www.example.org}",
         "    apache: {server_name: www.example.org}\n    haproxy: {raw: {backend: [\"http-request deny\"]}}")
    fleet = compile_catalog(tree)
    assert any(b.get("raw") == ["http-request deny"] or "http-request deny" in str(b)
               for n in fleet.nodes.values() for b in n["haproxy"]["backends"] if b["service"] == "www")
