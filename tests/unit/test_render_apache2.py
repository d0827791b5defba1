"""apache2: the backend vhosts of web1/web2, checked by ``apache2 -t`` as a whole tree."""
from __future__ import annotations

import os
import shutil

import pytest

from anycastlb.apply import apply_daemon, stage_and_check
from anycastlb.compiler import compile_catalog, copy_model
from anycastlb.render import HEADER, apache2

needs_apache = pytest.mark.skipif(not (shutil.which("apache2") and os.path.isdir("/etc/apache2")),
                                  reason="needs Debian's apache2 package")


@pytest.fixture(scope="module")
def fleet(campus_catalog):
    return compile_catalog(campus_catalog)


def files(model, root="/"):
    return {f.path: f for f in apache2.render(model, {}, root)}


@needs_apache
@pytest.mark.parametrize("node", ["web1", "web2"])
def test_every_backend_passes_apache2_t_on_the_whole_tree(fleet, node):
    ok, out = stage_and_check(apache2.SPEC, fleet.nodes[node], {}, "/")
    assert ok, out
    assert "Syntax OK" in out and "already loaded" not in out


def test_only_backend_nodes_run_apache(fleet):
    assert [n for n, m in fleet.nodes.items() if apache2.SPEC.wanted(m)] == ["web1", "web2"]


def test_ports_conf_listens_only_on_the_backend_port(fleet):
    ports = files(fleet.nodes["web1"])["/etc/apache2/ports.conf"].content
    assert [line for line in ports.splitlines() if line.startswith("Listen")] == ["Listen 8080"]
    assert HEADER in ports.splitlines()[0]


def test_the_event_mpm_is_sized_for_a_backend_of_several_lb_nodes(fleet):
    """Debian's 150 workers and listen queue of 511 overflow under the LB nodes' bursts (SYNs
    dropped: 1–3 s stalls, measured at 1,000 services); within ServerLimit 16 × ThreadLimit 64."""
    conf = files(fleet.nodes["web1"])["/etc/apache2/conf-enabled/anycastlb.conf"].content
    block = conf.split("<IfModule mpm_event_module>\n", 1)[1].split("</IfModule>", 1)[0]
    settings = dict(line.split() for line in block.splitlines())
    assert settings == {"StartServers": "2", "ThreadsPerChild": "64", "MinSpareThreads": "128",
                        "MaxSpareThreads": "512", "MaxRequestWorkers": "1024", "ListenBacklog": "4096"}
    assert int(settings["MaxRequestWorkers"]) <= 16 * 64 and int(settings["ThreadsPerChild"]) <= 64


def test_debian_default_site_is_owned_so_apply_removes_it():
    assert "/etc/apache2/sites-enabled/000-default.conf" in apache2.SPEC.owned
    assert "/etc/apache2/sites-enabled/anycastlb-*.conf" in apache2.SPEC.owned


def test_vhost_per_service_with_its_own_root_and_logs(fleet):
    f = files(fleet.nodes["web2"])
    www = f["/etc/apache2/sites-enabled/anycastlb-www.conf"].content
    assert "<VirtualHost *:8080>" in www
    assert '\tServerName "www.example.org"\n' in www
    assert '\tDocumentRoot "/var/www/anycastlb/www"\n' in www
    assert "ErrorLog ${APACHE_LOG_DIR}/anycastlb-www-error.log" in www
    assert "CustomLog ${APACHE_LOG_DIR}/anycastlb-www-access.log combined" in www
    assert 'Header always set X-Served-By "web2"' in www
    intranet = f["/etc/apache2/sites-enabled/anycastlb-intranet.conf"].content
    assert 'ServerName "intranet.example.org"' in intranet and "/var/www/anycastlb/intranet" in intranet


def test_index_names_service_and_node_and_health_file_exists(fleet):
    f = files(fleet.nodes["web1"])
    index = f["/var/www/anycastlb/intranet/index.html"].content
    assert "<b>intranet</b>" in index and "<b>web1</b>" in index
    assert f["/var/www/anycastlb/intranet/healthz"].content == "ok intranet web1\n"


def test_unknown_host_is_refused_by_a_catch_all_vhost(fleet):
    f = files(fleet.nodes["web1"])
    names = sorted(p for p in f if "/sites-enabled/" in p)
    assert names[0].endswith("anycastlb-000-default-8080.conf"), "the catch-all must be the first vhost of its port"
    assert "Require all denied" in f[names[0]].content


def test_modules_loaded_without_double_loading(fleet):
    load = files(fleet.nodes["web1"])["/etc/apache2/mods-enabled/zz-anycastlb.load"].content
    assert "<IfModule !headers_module>\n\tLoadModule headers_module /usr/lib/apache2/modules/mod_headers.so" in load


def test_staged_paths_point_into_the_staging_root(fleet):
    f = files(fleet.nodes["web1"], root="/tmp/stage")
    assert '"/tmp/stage/var/www/anycastlb/www"' in f["/etc/apache2/sites-enabled/anycastlb-www.conf"].content


def test_nested_health_path_and_refused_names(fleet):
    m = copy_model(fleet.nodes["web1"])
    m["apache"]["vhosts"][0]["health_path"] = "/health/ready/"
    assert "/var/www/anycastlb/intranet/health/ready/index.html" in files(m)
    m["apache"]["vhosts"][0]["health_path"] = "/../../etc/passwd"  # cannot leave the document root
    assert "/var/www/anycastlb/intranet/etc/passwd" in files(m)
    for index in ("/", "/index.html", "/?ready"):  # the index page answers: no health file of its own
        m["apache"]["vhosts"][0]["health_path"] = index
        f = files(m)
        assert f["/var/www/anycastlb/intranet/index.html"].content.startswith("<!DOCTYPE html>")
        assert not [p for p in f if p.startswith("/var/www/anycastlb/intranet/") and not p.endswith("index.html")]
    m["apache"]["vhosts"][0]["health_path"] = None  # a tcp check: no health file
    assert [p for p in files(m) if p.startswith("/var/www/anycastlb/intranet/")] == [
        "/var/www/anycastlb/intranet/index.html"]
    m["apache"]["vhosts"][0]["health_path"] = "/ready?probe=1"  # the query is not part of the file
    assert "/var/www/anycastlb/intranet/ready" in files(m)
    m["apache"]["vhosts"][0]["health_path"] = "/healthz"
    m["apache"]["vhosts"][0]["service"] = "we b"
    with pytest.raises(ValueError):
        files(m)


# ------------------------------------------------------------------ apply (functional)


class Recorder:
    """A fake ServiceControl that records what it is asked to do."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def running(self, daemon):
        self.calls.append(("running", daemon))
        return True

    def start(self, daemon):
        self.calls.append(("start", daemon))
        return "started"

    def reload_or_start(self, daemon):
        self.calls.append(("reload", daemon))
        return "reloaded"


@pytest.fixture
def live_root(tmp_path):
    """A temp root holding a copy of the host's packaged /etc/apache2 (the 'live' tree)."""
    shutil.copytree("/etc/apache2", tmp_path / "etc/apache2", symlinks=True)
    return tmp_path


def snapshot(root):
    out = {}
    for d, _, fs in os.walk(root):
        for name in fs:
            p = os.path.join(d, name)
            out[p] = open(p, "rb").read() if not os.path.islink(p) else os.readlink(p)
        for name in os.listdir(d):
            if os.path.islink(os.path.join(d, name)):
                out[os.path.join(d, name)] = os.readlink(os.path.join(d, name))
    return out


@needs_apache
def test_apply_then_unchanged_then_rejected(fleet, live_root, monkeypatch):
    rec = Recorder()
    model = fleet.nodes["web1"]
    assert os.path.lexists(live_root / "etc/apache2/sites-enabled/000-default.conf")
    res = apply_daemon("apache2", model, root=str(live_root), control=rec)
    assert res.result is True, res.comment
    assert rec.calls == [("reload", "apache2")]
    assert not os.path.lexists(live_root / "etc/apache2/sites-enabled/000-default.conf")
    assert (live_root / "etc/apache2/ports.conf").read_text().count("Listen") == 1
    assert (live_root / "var/www/anycastlb/www/healthz").exists()

    rec.calls.clear()
    res = apply_daemon("apache2", model, root=str(live_root), control=rec)
    assert res.result is True and "desired state" in res.comment
    assert ("reload", "apache2") not in rec.calls

    # a config apache2 -t refuses (a module that does not exist): refused, nothing changes
    before = snapshot(live_root)
    rec.calls.clear()
    monkeypatch.setattr(apache2, "MODULES", apache2.MODULES + ("nosuchmodule",))
    res = apply_daemon("apache2", model, root=str(live_root), control=rec)
    assert res.result is False
    assert "mod_nosuchmodule.so" in res.comment and "nothing was reloaded" in res.comment
    assert res.as_state()["changes"] == {} and res.as_state()["skip_watch"] is True
    assert rec.calls == []
    assert snapshot(live_root) == before
