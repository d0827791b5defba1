"""Quoting at the exit: each dialect's filter, an injection per class, and render's only error type.

These tests hand hostile strings to the renderers directly (through a node model), so
they test the second line of defence alone, whatever the schema lets through. Where a
config is produced, the daemon's real checker must accept it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from anycastlb import cli, httpstatus
from anycastlb.apply import check_node, stage_and_check
from anycastlb.compiler import compile_catalog, copy_model
from anycastlb.render import RenderError, apache2, bird, confine, daemon, haproxy, healthd, icinga2, nftables, quote

HOSTILE_LINE = ["\n", "\r", "\x00", "\u2028", "\u2029", "\x85", "\t", "\u202e"]


@pytest.fixture(scope="module")
def fleet(campus_catalog: Path) -> dict[str, dict[str, Any]]:
    return compile_catalog(campus_catalog).nodes


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    from anycastlb.render_cli import throwaway_certificates
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    return {"certificates": throwaway_certificates(["campus-wildcard"]), "bgp_passwords": {}}


def text_of(files: list[Any], path: str) -> str:
    return next(f.content for f in files if f.path == path)


# ------------------------------------------------------------------ the filters, one per dialect


@pytest.mark.parametrize("filt", [quote.haproxy, quote.haproxy_lf, quote.apache, quote.bird, quote.nft,
                                  quote.nft_comment, quote.icinga, quote.icinga_macro, quote.comment,
                                  quote.c_comment, quote.tojson])
@pytest.mark.parametrize("char", HOSTILE_LINE)
def test_every_filter_refuses_line_breaks_nul_and_separators(filt: Any, char: str) -> None:
    with pytest.raises(RenderError, match=f"U\\+{ord(char):04X}"):
        filt(f"ok{char}stats enable")


def test_haproxy_weak_quoting_escapes_what_the_manual_lists() -> None:
    assert quote.haproxy('a b#c"d\\e$HOME\'f') == '"a b#c\\"d\\\\e\\$HOME\'f"'
    assert quote.haproxy_lf("50%") == '"50%%"'
    assert quote.haproxy_name("www-8080") == "www-8080"
    for bad in ("mail1 stats", "a#b", "a\"b", "", "a/b"):
        with pytest.raises(RenderError, match="identifier"):
            quote.haproxy_name(bad)


def test_apache_quoting_and_no_variable_expansion() -> None:
    assert quote.apache('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert quote.apache_header("100%") == '"100%%"'
    with pytest.raises(RenderError, match="variable"):
        quote.apache("${APACHE_LOG_DIR}")


def test_bird_strings_have_no_escapes_so_a_quote_is_refused() -> None:
    assert quote.bird("a\\b #c $d") == '"a\\b #c $d"'
    with pytest.raises(RenderError, match="double quote"):
        quote.bird('a"b')
    assert quote.bird_name("rout_rr1_4") == "rout_rr1_4"
    for bad in ("lb-4", "4lb", "a b", "a;b"):
        with pytest.raises(RenderError):
            quote.bird_name(bad)


def test_nft_strings_and_comments() -> None:
    assert quote.nft_comment('say "hi" \\ ok') == '"say \'hi\' \\ ok"'
    assert len(quote.nft_comment("x" * 300).encode()) == 130
    with pytest.raises(RenderError, match="double quote"):
        quote.nft('a"b')


def test_icinga_strings_macros_and_names() -> None:
    assert quote.icinga('a"b\\c') == '"a\\"b\\\\c"'
    assert quote.icinga(["x", 1, True, None]) == '[ "x", 1, true, null ]'
    assert quote.icinga_macro("/a$host.name$") == '"/a$$host.name$$"'
    assert quote.icinga_name("backend www web1:8080") == '"backend www web1:8080"'
    for bad in ("a!b", 'a"b', "$x$", " lead"):
        with pytest.raises(RenderError, match="object name"):
            quote.icinga_name(bad)


def test_comments_cannot_end_a_line_or_a_block() -> None:
    assert quote.comment("a\\") == "a/"  # apache continues a line ending in a backslash
    assert "*/" not in quote.c_comment("x */ object Host")


def test_json_is_ascii_and_refuses_line_breaks() -> None:
    assert quote.tojson({"a": "<é>"}) == '{"a": "<\\u00e9>"}'


def test_request_target_is_percent_encoded_once() -> None:
    assert quote.request_target("/a b#c?d=1") == "/a%20b%23c?d=1"
    assert quote.request_target("/ok%20already") == "/ok%20already"
    assert quote.request_target("healthz") == "/healthz"
    with pytest.raises(RenderError):
        quote.request_target("/a\nb")


@pytest.mark.parametrize("expect,text,allowed,refused", [
    (200, "200", [200], [201]), ("2xx", "200-299", [200, 299], [300]), ("200-204", "200-204", [204], [205]),
    ("200,301-302", "200,301-302", [200, 302], [303])])
def test_status_codes_every_form(expect: Any, text: str, allowed: list[int], refused: list[int]) -> None:
    ranges = httpstatus.parse(expect)
    assert httpstatus.text(ranges) == text
    assert all(httpstatus.allows(ranges, c) for c in allowed)
    assert not any(httpstatus.allows(ranges, c) for c in refused)


@pytest.mark.parametrize("bad", ["2xxx", "600", "abc", "299-200", True, 99, "200\n"])
def test_status_codes_refused(bad: Any) -> None:
    with pytest.raises(RenderError):
        quote.status_ranges(bad)


def test_a_template_that_forgets_its_filter_fails_instead_of_printing(tmp_path: Path) -> None:
    import jinja2
    env = jinja2.Environment(finalize=quote.finalize)
    assert env.from_string("{{ x }} {{ n }}").render(x="www-8080", n=3) == "www-8080 3"
    with pytest.raises(RenderError, match="without a quoting filter"):
        env.from_string("{{ x }}").render(x="a b")


# ------------------------------------------------------------------ injections, one per class


def test_backend_name_newline_adds_no_stats_lines(fleet: dict[str, Any], certs: dict[str, Any]) -> None:
    m = copy_model(fleet["lb1"])
    m["haproxy"]["backends"][0]["servers"][0]["name"] = "mail1 203.0.113.25:143\n    stats enable\n    stats uri /x"
    with pytest.raises(RenderError) as err:
        haproxy.render(m, certs, "/")
    assert err.value.node == "lb1" and err.value.daemon == "haproxy" and err.value.file == haproxy.CONFIG
    m["haproxy"]["backends"][0]["servers"][0]["name"] = "mail1 stats enable"  # a space: not a name
    with pytest.raises(RenderError, match="identifier"):
        haproxy.render(m, certs, "/")


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")
def test_check_path_and_host_stay_one_argument_and_pass_haproxy(fleet: dict[str, Any], certs: dict[str, Any]) -> None:
    m = copy_model(fleet["lb1"])
    plain = text_of(haproxy.render(m, certs, "/"), haproxy.CONFIG)
    be = next(b for b in m["haproxy"]["backends"] if b["name"] == "www-8080")
    be["check"].update(path="/a b#c$HOME?x='1'", host="www.example.org%[src]", expect="2xx")
    cfg = text_of(haproxy.render(m, certs, "/"), haproxy.CONFIG)
    assert len(cfg.splitlines()) == len(plain.splitlines())  # no line added
    line = next(x.strip() for x in cfg.splitlines() if "www.example.org%" in x)
    assert line == ('http-check send meth GET uri "/a%20b%23c\\$HOME?x=\'1\'" ver HTTP/1.1 '
                    'hdr Host "www.example.org%%[src]"')
    assert 'http-check expect status "200-299"' in cfg
    ok, out = stage_and_check(daemon("haproxy"), m, certs, "/nonexistent-root")
    assert ok, out
    for path in ("/x\n    http-request return status 200", "/x\rhttp-request redirect location /"):
        be["check"]["path"] = path
        with pytest.raises(RenderError, match="U\\+000"):
            haproxy.render(m, certs, "/")


def test_alias_newline_adds_no_alias_directive(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["web1"])
    m["apache"]["vhosts"][0]["aliases"] = ["x.example.org\n\tAlias /etc-dump /etc\n\t<Directory /etc>"]
    with pytest.raises(RenderError) as err:
        apache2.render(m, {}, "/")
    assert err.value.node == "web1" and err.value.file.endswith("anycastlb-intranet.conf")


@pytest.mark.skipif(not shutil.which("apache2"), reason="apache2 is not installed")
def test_apache_strings_are_quoted_and_pass_apache(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["web1"])
    v = m["apache"]["vhosts"][0]
    v.update(aliases=['a.example.org Alias /etc-dump /etc', 'b"c\\'], server_name="srv.example.org #x",
             health_path="/ready now#1?probe")
    files = {f.path: f for f in apache2.render(m, {}, "/")}
    conf = files["/etc/apache2/sites-enabled/anycastlb-intranet.conf"].content
    assert '\tServerAlias "a.example.org Alias /etc-dump /etc"\n' in conf
    assert '\tServerAlias "b\\"c\\\\"\n' in conf
    assert [x for x in conf.splitlines() if x.strip().startswith("Alias")] == []
    assert '\tServerName "srv.example.org #x"\n' in conf
    # the file apache serves for the (percent-encoded) health path is the decoded one
    assert "/var/www/anycastlb/intranet/ready now#1" in files
    ok, out = stage_and_check(daemon("apache2"), m, {}, "/")
    assert ok, out


def test_html_in_server_name_is_escaped_in_the_index_page(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["web1"])
    m["apache"]["vhosts"][0]["server_name"] = "<script>alert('x')</script>.example.org"
    index = text_of(apache2.render(m, {}, "/"), "/var/www/anycastlb/intranet/index.html")
    assert "<script>" not in index
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.example.org" in index


def test_bird_protocol_names_and_descriptions(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["lb1"])
    m["bgp"]["neighbors"][0]["ident"] = "rout-rr1-4"
    with pytest.raises(RenderError, match="protocol name") as err:
        bird.render(m, {}, "/")
    assert err.value.node == "lb1" and err.value.file == bird.CONFIG
    m = copy_model(fleet["lb1"])
    m["bgp"]["neighbors"][0]["name"] = 'rr1"; export all; #'
    with pytest.raises(RenderError, match="double quote"):
        bird.render(m, {}, "/")


def test_icinga_object_names_and_macros(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["mon1"])
    m["monitoring"]["users"] = ["netops!x"]
    with pytest.raises(RenderError, match="object name") as err:
        icinga2.render(m, {}, "/")
    assert err.value.node == "mon1"
    m = copy_model(fleet["mon1"])
    check = next(c for c in m["monitoring"]["checks"] if c.get("path"))
    check["path"] = "/$host.address$"
    services = text_of(icinga2.render(m, {}, "/"), f"{icinga2.OURS}/services.conf")
    assert 'vars.http_uri = "/$$host.address$$"' in services


def test_nft_comment_quote_is_inert(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["lb1"])
    m["firewall"]["rules"][0]["comment"] = 'bfd" accept; ip saddr 0.0.0.0/0 accept comment "x'
    text = text_of(nftables.render(m, {}, "/"), nftables.PATH)
    assert "comment \"bfd' accept; ip saddr 0.0.0.0/0 accept comment 'x\"" in text


def test_healthd_gets_a_clean_request_target_and_host(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["kdc1"])
    m["health"]["announcements"][0]["watch"] = {"type": "http", "address": "192.0.2.88", "port": 88,
                                                "path": "/a b", "expect": "2xx", "host": "kdc.example.org"}
    doc = healthd.config(m)
    watch = doc["announcements"][0]["watch"]
    assert watch["path"] == "/a%20b" and watch["expect"] == "200-299"
    m["health"]["announcements"][0]["watch"]["host"] = "kdc.example.org\r\nX-Evil: 1"
    with pytest.raises(RenderError):
        healthd.render(m, {}, "/")


def test_healthd_parser_refuses_what_would_break_its_request() -> None:
    from anycastlb.healthd import ConfigError, parse_watch
    base = {"type": "http", "address": "192.0.2.1", "port": 80}
    assert parse_watch("w", {**base, "path": "/ok", "expect": "200-299"}).expect == "200-299"
    for bad in ({"path": "/a b"}, {"path": "/a\r\nHost: x"}, {"host": "a b"}, {"expect": "2xxx"}):
        with pytest.raises(ConfigError):
            parse_watch("w", {**base, **bad})


# ------------------------------------------------------------------ crashes become errors or configs


def test_an_unexpected_failure_is_a_render_error_naming_node_and_daemon(fleet: dict[str, Any]) -> None:
    m = copy_model(fleet["lb1"])
    m["haproxy"]["backends"][0]["check"]["timeout_ms"] = 10 ** 5000  # str() of it raises ValueError
    with pytest.raises(RenderError) as err:
        haproxy.render(m, {"certificates": {"campus-wildcard": {"cert": "c", "key": "k"}}}, "/")
    assert err.value.node == "lb1" and err.value.daemon == "haproxy"
    del m["haproxy"]["backends"]
    with pytest.raises(RenderError, match="KeyError"):
        haproxy.render(m, {}, "/")


CRASHERS = """\
bgp: {asn: 64512}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {address: 198.51.100.11, roles: [route-reflector]}
  lb1: {address: 198.51.100.21}
  web1: {address: 198.51.100.31}
  kdc1: {address: 198.51.100.41}
clusters:
  edge: {nodes: [lb1]}
services:
  tcpweb:      # an apache service with a tcp check
    mode: http
    vip: 192.0.2.10
    cluster: edge
    ports: [80]
    backend_port: 8080
    check: {tcp: {}}
    apache: {server_name: tcp.example.org}
    backends: [web1]
  rootweb:     # check path "/", the schema's own default, on an apache service
    mode: http
    vip: 192.0.2.12
    cluster: edge
    ports: [80]
    backend_port: 8081
    check: {http: {path: /}}
    apache: {server_name: root.example.org}
    backends: [web1]
  kdc:         # an anycast service expecting a status class
    mode: anycast
    vip: 192.0.2.88
    ports: [88/tcp]
    check: {http: {port: 88, expect: 2xx}}
    backends: [kdc1]
"""


@pytest.mark.skipif(not all(shutil.which(b) for b in ("haproxy", "bird", "apache2", "nft")),
                    reason="needs the daemons' checkers")
def test_former_crash_sites_are_refused_by_lint_or_render_and_pass_every_checker(tmp_path: Path) -> None:
    """Each of these used to pass lint and crash render: now lint names file:line, or render copes."""
    from anycastlb.errors import CatalogRefused
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CRASHERS)
    try:
        fleet = compile_catalog(cat)
    except CatalogRefused as exc:
        assert {e.name for e in exc.errors} <= {"tcpweb", "rootweb", "kdc"}
        assert all(e.line and e.key for e in exc.errors), exc.summary()
        return
    for nid, model in fleet.nodes.items():
        for name, (ok, out) in check_node(model).items():
            assert ok, f"{nid} {name}: {out}"


def test_the_renderers_cope_with_every_former_crash_form(fleet: dict[str, Any]) -> None:
    """Whatever lint decides, the renderers take these forms without an exception."""
    web = copy_model(fleet["web1"])
    for health in (None, "/"):  # an apache service with a tcp check; the schema's default path
        web["apache"]["vhosts"][0]["health_path"] = health
        assert apache2.render(web, {}, "/")
    kdc = copy_model(fleet["kdc1"])
    kdc["health"]["announcements"][0]["watch"] = {"type": "http", "address": "192.0.2.88", "port": 88,
                                                  "path": "/", "expect": "2xx"}
    assert healthd.config(kdc)["announcements"][0]["watch"]["expect"] == "200-299"


def test_cert_name_cannot_make_render_write_outside_its_tree(fleet: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    src = Path(__file__).resolve().parents[2] / "anycastlb/examples/campus.yaml"
    cat = tmp_path / "cat" / "campus.yaml"
    cat.parent.mkdir()
    cat.write_text(src.read_text().replace("certificate: campus-wildcard", "certificate: ../../../../escaped"))
    sec = tmp_path / "secrets.yaml"
    sec.write_text(yaml.safe_dump({"certificates": {"../../../../escaped": {"cert": "C", "key": "K"}}}))
    out = tmp_path / "a" / "b" / "out"
    rc = cli.main(["render", str(cat), "--out", str(out), "--secrets", str(sec)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "escaped" in err  # refused by lint (file:line) or by render (node, file)
    assert not [p for p in tmp_path.rglob("*escaped*")], "nothing written outside the tree"


def test_confine_refuses_dotdot_and_symlinked_parents(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    assert confine(str(root), "/etc/haproxy/haproxy.cfg") == str(root / "etc/haproxy/haproxy.cfg")
    for bad in ("/etc/../../x", "etc/x", "/etc/haproxy/certs/anycastlb-../../../x.pem"):
        with pytest.raises(RenderError, match="without '..'|absolute"):
            confine(str(root), bad)
    (root / "etc" / "link").symlink_to(tmp_path)
    with pytest.raises(RenderError, match="outside"):
        confine(str(root), "/etc/link/x")
    with pytest.raises(RenderError, match="plain file name"):
        haproxy.cert_path("../x")
