"""Issue 11, the door: every string that reaches a config has a grammar, matched whole.

Each refusal names file:line, the object and the key; names stay distinct after
``ident()`` and never take a name the renderers generate themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused

ROOT = Path(__file__).resolve().parents[2]
CAMPUS_TEXT = (ROOT / "anycastlb" / "examples" / "campus.yaml").read_text()
EDGES = ROOT / "tests" / "data" / "edges.yaml"


def refused(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


def edit(old: str, new: str) -> str:
    assert old in CAMPUS_TEXT, old
    return CAMPUS_TEXT.replace(old, new, 1)


def line(text: str, needle: str) -> int:
    return next(i for i, x in enumerate(text.splitlines(), 1) if needle in x)


def assert_one(errors: list[str], where: str, obj: str, key: str, *words: str) -> None:
    hits = [e for e in errors if e.startswith(where) and obj in e and f"key {key!r}" in e
            and all(w in e for w in words)]
    assert hits, f"no error at {where} {obj} key {key!r} {words}: {errors}"


# (old, new, needle for the line, object, key, words in the message)
CASES = [
    # injection through a newline / space / '#' / '?' in strings that reach configs
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/healthz\\nhttp-request return status 200"}}',
     "path: \"/healthz", "template 'web'", "check.http.path", ("not an absolute URI path",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/a b"}}', "path: \"/a b", "template 'web'",
     "check.http.path", ("no query",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/healthz#x"}}', "path: \"/healthz#", "template 'web'",
     "check.http.path", ("fragment",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/healthz?x=1"}}', "path: \"/healthz?",
     "template 'web'", "check.http.path", ("query",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/a/../etc"}}', "path: \"/a/..", "template 'web'",
     "check.http.path", ("'..' segment",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: "/a\\u2028b"}}', "path: \"/a", "template 'web'",
     "check.http.path", ("not an absolute URI path",)),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: /healthz, expect: "200\\nhttp-request deny"}}',
     "expect:", "template 'web'", "check.http.expect", ("not an HTTP status", "2xx")),
    ("check: {http: {path: /healthz}}", 'check: {http: {path: /healthz, host: "a b"}}', "host:", "template 'web'",
     "check.http.host", ("host name (RFC 1123)",)),
    ("apache: {server_name: www.example.org}", 'apache: {server_name: "www.example.org\\n  Alias /x /etc"}',
     "server_name: \"www", "service 'www'", "apache.server_name", ("host name",)),
    ("apache: {server_name: www.example.org}", "apache: {server_name: '<b>x</b>.example.org'}",
     "server_name: '<b>", "service 'www'", "apache.server_name", ("host name",)),
    ("apache: {server_name: www.example.org}", 'apache: {server_name: "*.example.org"}',
     "server_name: \"*", "service 'www'", "apache.server_name", ("host name",)),
    ("apache: {server_name: www.example.org}", 'apache: {server_name: www.example.org, aliases: ["x\\nAlias /e /etc"]}',
     "server_name: www", "service 'www'", "apache.aliases.0", ("*.example.org",)),
    ("tls: {certificate: campus-wildcard}", "tls: {certificate: ../../etc/passwd}", "certificate: ../",
     "template 'tls-web'", "tls.certificate", ("not a name",)),
    ("mail1: {address: 203.0.113.25}", '"mail1\\n  stats enable": {address: 203.0.113.25}', "stats enable",
     "service 'imap'", "backends", ("not a name",)),
    ("monitor: {notify: [netops]}", 'monitor: {notify: ["netops\\"; x"]}', "notify:", "defaults", "monitor.notify.0",
     ("not a name",)),
    ("balance: leastconn", "balance: leastconn\n    description: \"two\\nlines\"", "description:", "service 'intranet'",
     "description", ("one line",)),
    ("kdc1: {address: 198.51.100.41,", 'kdc1: {address: "198.51.100.41\\n",', "kdc1: {address:", "node 'kdc1'",
     "address", ("not an IPv4 address",)),
    ('kdc1: {address: 198.51.100.41, address6: "2001:db8:100::41"}',
     'kdc1: {address: 198.51.100.41, address6: "2001:db8:100::41%x y"}', "kdc1:", "node 'kdc1'", "address6",
     ("not an IPv6 address",)),
    ("mail1: {address: 203.0.113.25}", 'mail1: {address: "2001:db8::1%eth0\\nstats"}', "mail1:", "service 'imap'",
     "backends.mail1.address", ("not an IP address",)),
    ("vip: 192.0.2.20", 'vip: "::ffff:192.0.2.20"', "vip: \"::ffff", "service 'imap'", "vip[0]",
     ("IPv4-mapped", "write 192.0.2.20")),
    ("allow: [198.51.100.0/24,", 'allow: ["2001:db8::%x/64", 198.51.100.0/24,', "allow: [\"2001", "service 'intranet'",
     "allow", ("neither 'any' nor a network prefix",)),
    # integers bounded, statuses typed
    ("check: {tcp: {port: 88}}", "check: {tcp: {port: " + "9" * 5000 + "}}", "99999", "yaml", "",
     ("5000 characters",)),
    ("web2: {weight: 50, state: drain}", "web2: {weight: 99999999999, state: drain}", "web2: {weight:",
     "service 'intranet'", "backends.web2.weight", ("out of range",)),
    # names matched whole, reserved, distinct after ident()
    ("  mon1: {address:", "  lb-4: {address: 198.51.100.61}\n  lb_4: {address: 198.51.100.62}\n  mon1: {address:",
     "lb_4:", "node 'lb_4'", "", ("node 'lb-4'", "same identifier")),
    ("  kdc:                            # directly anycasted: every backend announces the VIP itself",
     "  000-default-80:\n    description: x\n  kdc:",
     "000-default-80:", "service '000-default-80'", "", ("reserved",)),
    ("  mon1: {address:", "  vip-www: {address: 198.51.100.61}\n  mon1: {address:", "vip-www:", "node 'vip-www'", "",
     ("reserved",)),
]


@pytest.mark.parametrize("old,new,needle,obj,key,words", CASES, ids=[f"{c[4] or c[3]}-{i}" for i, c in
                                                                       enumerate(CASES)])
def test_grammar_refusals_name_file_line_object_key(tmp_path, old, new, needle, obj, key, words):
    text = edit(old, new)
    errors = refused(tmp_path, text)
    where = f"{tmp_path / 'catalog.yaml'}:{line(text, needle)}"
    if key:
        assert_one(errors, where, obj, key, *words)
    else:
        assert any(e.startswith(where) and obj in e and all(w in e for w in words) for e in errors), errors


def test_name_pattern_is_anchored_at_the_very_end(tmp_path):
    # '$' would accept "lb1\n"; the names are matched whole.
    text = edit("  lb1:  {address:", '  "lb1\\n":  {address:')
    errors = refused(tmp_path, text)
    assert any("is not a valid name" in e for e in errors), errors


def test_former_crash_forms_are_admitted_and_compile(tmp_path):
    # The renderers handle them (tests/unit/test_quoting.py renders them through every checker):
    # a status class on an anycast service, a tcp check or '/' on an apache service.
    text = edit("check: {tcp: {port: 88}}", "check: {http: {path: /health, expect: 2xx, port: 8080}}")
    text = text.replace("check: {http: {path: /healthz}}", "check: {http: {}}", 1)
    p = tmp_path / "c.yaml"
    p.write_text(text)
    fleet = compile_catalog(p)
    assert fleet.nodes["kdc1"]["health"]["announcements"][0]["watch"]["expect"] == "200-299"


@pytest.mark.parametrize("value,canonical", [(200, "200"), ("2xx", "200-299"), ("200-204", "200-204"),
                                             ("301-301", "301")])
def test_status_forms_are_canonical_in_the_model(tmp_path, value, canonical):
    text = edit("check: {http: {path: /healthz}}", f"check: {{http: {{path: /healthz, expect: {value}}}}}")
    p = tmp_path / "c.yaml"
    p.write_text(text)
    fleet = compile_catalog(p)
    be = next(b for b in fleet.nodes["lb1"]["haproxy"]["backends"] if b["service"] == "intranet")
    assert be["check"]["expect"] == canonical


def test_grammar_edges_compile_and_canonicalise():
    fleet = compile_catalog(EDGES)
    assert fleet.nodes["rr1"]["address6"] == "2001:db8:100::11"   # written 2001:DB8:100::11
    web1 = fleet.nodes["web1"]["apache"]["vhosts"][0]
    assert web1["aliases"] == ["*.www.example.org", "web.example.org"]
