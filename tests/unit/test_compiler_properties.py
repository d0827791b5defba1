"""Property tests: any catalog gives a model or refusals with messages — never a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.loader import load_text
from anycastlb.compiler import compile_raw

CAMPUS = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"
BASE = yaml.safe_load(CAMPUS.read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.sampled_from(
        ["any", "2s", "100ms", "http", "tcp", "anycast", "udp", "88/udp", "192.0.2.99", "2001:db8:1::99",
         "203.0.113.7", "192.0.2.0/24", "lb1", "web1", "edge", "web", "tls-web", "drain", "maintenance", ""]),
    st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["mode", "vip", "ports", "cluster", "backends", "check", "http", "tcp", "port", "address", "weight",
         "state", "extends", "allow", "tls", "certificate", "nodes", "roles", "asn", "x"]), inner, max_size=3)),
    max_leaves=8)


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(paths(v, prefix + (i,)))
    return out


ALL_PATHS = [p for p in paths(BASE) if p]


def mutate(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    doc = copy.deepcopy(doc)
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


def compiles_or_refuses(doc: Any) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        compile_raw(load_text(text, "prop.yaml"), "prop.yaml")
    except CatalogRefused as exc:
        assert exc.errors, "a refusal must carry at least one error"
        for e in exc.errors:
            assert e.file and e.message and str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values, st.booleans()), min_size=1, max_size=4))
def test_mutated_campus_never_tracebacks(mutations):
    doc = BASE
    for path, value, delete in mutations:
        try:
            doc = mutate(doc, path, value, delete)
        except (KeyError, IndexError, TypeError):
            continue
    compiles_or_refuses(doc)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["bgp", "nodes", "services", "templates", "clusters", "peers",
                                        "defaults", "vip_pools", "management", "zzz"]), values, max_size=6))
def test_arbitrary_catalog_never_tracebacks(doc):
    compiles_or_refuses(doc)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_tracebacks(text):
    try:
        compile_raw(load_text(text, "t.yaml"), "t.yaml")
    except CatalogRefused as exc:
        assert all(str(e) for e in exc.errors)


def test_campus_itself_compiles():
    assert compile_catalog(CAMPUS).summary["nodes"] == 11


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values, st.booleans()), min_size=1, max_size=3))
def test_what_compiles_renders_on_every_node(mutations):
    """lint ⊇ render: a mutated campus the compiler accepts renders every node's files without an exception
    (the daemons' checkers run on the grammar's edges in test_compiler_catalogs.py)."""
    from anycastlb.minion import render  # what `salt-call anycastlb.render` shows

    doc = BASE
    for path, value, delete in mutations:
        try:
            doc = mutate(doc, path, value, delete)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        fleet = compile_raw(load_text(yaml.safe_dump(doc, sort_keys=False), "prop.yaml"), "prop.yaml")
    except CatalogRefused:
        return
    for model in fleet.nodes.values():
        secrets = {"certificates": {c: {"cert": "CERT", "key": "KEY"} for c in model["secrets"]["certificates"]},
                   "bgp_passwords": {p: "pw" for p in model["secrets"]["bgp_passwords"]}}
        files = render(model, secrets, show_secrets=True)
        assert all(isinstance(text, str) for fs in files.values() for text in fs.values())


def test_a_port_written_as_a_mapping_is_checked_like_any_port():
    """Found by the property test above: ``ports: {port: false}`` was read as port 0, which lint passed
    and the nftables renderer refused."""
    doc = mutate(BASE, ("services", "imap", "ports"), {"mode": None, "port": False}, False)
    try:
        compile_raw(load_text(yaml.safe_dump(doc, sort_keys=False), "prop.yaml"), "prop.yaml")
    except CatalogRefused as exc:
        assert any("service 'imap', key 'ports" in str(e) and "prop.yaml:" in str(e) for e in exc.errors), exc.errors
    else:
        raise AssertionError("a port of false was accepted")
