"""apache2: a name-based vhost per backend service, its document root and health file.

Files (all owned, stale ones removed):

* ``/etc/apache2/ports.conf`` — replaces Debian's: only our ``Listen`` lines, so the
  packaged ``Listen 80`` never clashes with HAProxy or opens a port the firewall closes;
* ``/etc/apache2/sites-enabled/000-default.conf`` — Debian's default site is owned and
  never rendered, so apply removes it (``a2dissite 000-default``);
* ``/etc/apache2/mods-enabled/zz-anycastlb.load`` — the modules our vhosts need, each
  loaded only if no other ``.load`` file did (``a2enmod`` semantics without symlinks;
  the name sorts last so the packaged ``.load`` files go first);
* ``/etc/apache2/conf-enabled/anycastlb.conf`` — the global ``ServerName`` (the node);
* ``/etc/apache2/sites-enabled/anycastlb-000-default-<port>.conf`` — a catch-all vhost
  per port that refuses requests for an unknown ``Host`` (403) instead of serving the
  first service's pages;
* ``/etc/apache2/sites-enabled/anycastlb-<service>.conf`` — one vhost per service;
* ``/var/www/anycastlb/<service>/index.html`` naming the service and the node, and the
  health file at the service's health path (a plain static file, answering 200).

Checked as a whole tree: the live ``/etc/apache2`` is copied into the staging root and
``apache2 -t`` runs on it with Debian's ``envvars`` sourced.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import subprocess
from typing import Any
from urllib.parse import unquote

from ..service import Service
from . import CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, template_file, under
from .quote import carry, request_target

CONFDIR = "/etc/apache2"
WWW = "/var/www/anycastlb"
#: Modules our vhosts use: authz_core (Require), dir (DirectoryIndex), mime, headers (X-Served-By);
#: remoteip (RemoteIPProxyProtocol) only on a node whose HAProxy sends the PROXY protocol.
MODULES = ("authz_core", "dir", "mime", "headers", "setenvif")

#: How the service layer runs apache2 outside systemd: ``apache2ctl start`` (it sources
#: /etc/apache2/envvars and forks); reload = SIGUSR1 to the parent, i.e. a graceful
#: restart (``apache2ctl graceful``): running requests finish on the old children.
SERVICE = Service(
    name="apache2", unit="apache2", command=("apache2ctl", "start"), pidfile="/run/apache2/apache2.pid",
    reload="SIGUSR1", dirs=("/run/apache2", "/var/log/apache2", "/var/lock/apache2"))

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(text: str, what: str) -> str:
    """A name safe in a file name and an apache directive."""
    if not _SAFE.fullmatch(carry(text, "apache2", what)):
        raise RenderError(f"{what} {text!r} is not a plain name")
    return text


def _health_request_path(health_path: str) -> str:
    """The path of the health check's request as apache sees it: percent-decoded, no query."""
    decoded = unquote(request_target(health_path, "apache2").split("?", 1)[0])
    return carry(decoded, "apache2", "health path")


def _health_file(document_root: str, health_path: str | None) -> str | None:
    """The static file that answers ``health_path`` under ``document_root``.

    None when no health file is needed: no http check, or a path that names the
    index page (``/``, ``/index.html``: the index page answers 200 already). The
    query is not part of the file (apache serves the file whatever the query); the
    path is percent-decoded as apache decodes it. A path that leaves the document
    root is refused.
    """
    if health_path is None:
        return None
    decoded = _health_request_path(health_path)
    rel = posixpath.normpath("/" + decoded.lstrip("/")).lstrip("/")
    if rel.startswith(".."):
        raise RenderError(f"health path {health_path!r} leaves the document root")
    if decoded.endswith("/") or rel in ("", "."):
        rel = posixpath.join("" if rel == "." else rel, "index.html")
    if rel == "index.html":
        return None
    return posixpath.join(document_root, rel)


def _health_uri(health_path: str | None) -> str | None:
    """A regex of the request path (decoded, as mod_setenvif's ``Request_URI`` sees it, no query)
    of the health checks, whose requests are not logged; None without an http check."""
    if health_path is None:
        return None
    return "^" + re.escape(_health_request_path(health_path)) + "$"


@renderer("apache2")
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """The vhosts, ports, module loads and document roots of this backend node."""
    ap = model["apache"]
    node = _name(model["node"], "node")
    files: list[RenderedFile] = []
    ports = sorted(set(ap["listen"]) | {v["port"] for v in ap["vhosts"]})
    files.append(template_file(f"{CONFDIR}/ports.conf", "apache2/ports.conf.j2", node=node, ports=ports))
    proxy_ports = set(ap.get("proxy_protocol_ports", []))
    exceptions = list(ap.get("proxy_protocol_exceptions", []))
    files.append(template_file(f"{CONFDIR}/mods-enabled/zz-anycastlb.load", "apache2/anycastlb.load.j2",
                               modules=MODULES + (("remoteip",) if proxy_ports else ())))
    files.append(template_file(f"{CONFDIR}/conf-enabled/anycastlb.conf", "apache2/global.conf.j2", node=node))
    for port in ports:
        files.append(template_file(f"{CONFDIR}/sites-enabled/anycastlb-000-default-{port}.conf",
                                   "apache2/default.conf.j2", node=node, port=port,
                                   proxy_protocol=port in proxy_ports, exceptions=exceptions))
    for v in sorted(ap["vhosts"], key=lambda v: v["service"]):
        service = _name(v["service"], "service")
        docroot = f"{WWW}/{service}"
        try:
            health = _health_file(docroot, v.get("health_path"))
        except RenderError as exc:
            raise exc.located(file=f"{CONFDIR}/sites-enabled/anycastlb-{service}.conf") from None
        files.append(template_file(
            f"{CONFDIR}/sites-enabled/anycastlb-{service}.conf", "apache2/vhost.conf.j2", node=node, vhost=v,
            service=service, document_root=under(root, docroot), state=v.get("state", "active"),
            proxy_protocol=v["port"] in proxy_ports, exceptions=exceptions,
            health_path=None if v.get("health_path") is None else request_target(v["health_path"], "apache2"),
            health_uri=_health_uri(v.get("health_path"))))
        files.append(template_file(posixpath.join(docroot, "index.html"), "apache2/index.html.j2",
                                   node=node, vhost=v))
        if health is not None:
            files.append(RenderedFile(health, f"ok {service} {node}\n"))
    return files


def envvars_command(staging: str, *args: str) -> list[str]:
    """``apache2 ARGS`` on the staged tree, with the staged Debian envvars sourced."""
    confdir = under(staging, CONFDIR)
    rundir = shlex.quote(under(staging, "/run/apache2"))
    script = (f"export APACHE_CONFDIR={shlex.quote(confdir)}; "
              f". {shlex.quote(confdir)}/envvars; "
              # the checker must not need (or touch) the live runtime directories
              f"export APACHE_RUN_DIR={rundir} APACHE_LOCK_DIR={rundir} APACHE_PID_FILE={rundir}/apache2.pid; "
              f"mkdir -p {rundir}; "
              f"exec apache2 -d {shlex.quote(confdir)} -f {shlex.quote(confdir)}/apache2.conf "
              + " ".join(shlex.quote(a) for a in args))
    return ["sh", "-c", script]


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """``apache2 -t`` on the whole staged tree."""
    cmd = envvars_command(staging, "-t")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        return CheckResult(False, " ".join(cmd), f"cannot run the checker: {exc}")
    return CheckResult(proc.returncode == 0, cmd[-1], (proc.stdout + proc.stderr).strip())


SPEC = DaemonSpec(
    name="apache2",
    wanted=lambda model: bool(model.get("apache")),
    render=render,
    check=check,
    tree=(CONFDIR,),
    owned=(f"{CONFDIR}/ports.conf",
           f"{CONFDIR}/mods-enabled/zz-anycastlb.load",
           f"{CONFDIR}/conf-enabled/anycastlb.conf",
           f"{CONFDIR}/sites-enabled/000-default.conf",
           f"{CONFDIR}/sites-enabled/anycastlb-*.conf",
           f"{WWW}/**"),
    binary="apache2",
    packages=("apache2",),
)
