"""Model → config text, one renderer per daemon, one Jinja environment.

Every renderer is a pure function ``render(model, secrets, root) -> list[RenderedFile]``:
``model`` is one node's compiled model (``anycastlb show --json``), ``secrets``
that node's secret values (``{"certificates": {name: {"cert", "key"}},
"bgp_passwords": {name: str}}``) and ``root`` the directory the files will live
under ("/" in production; a staging directory when a checker validates a
candidate, so paths *inside* the configs point at the candidate files too).

A :class:`DaemonSpec` ties a renderer to the daemon's checker, the files it owns
and how it is reloaded; :data:`DAEMONS` lists them in the order they are applied.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
HEADER = "managed by anycastlb: edit the catalog, not this file"


class RenderError(ValueError):
    """The model and secrets cannot make a config (a certificate's value is missing, a string
    its dialect cannot carry ...). The only exception a renderer raises; ``node``, ``daemon``
    and ``file`` say where, when known."""

    def __init__(self, message: str, node: str = "", daemon: str = "", file: str = ""):
        super().__init__(message)
        self.message, self.node, self.daemon, self.file = message, node, daemon, file

    def __str__(self) -> str:
        node = self.node if self.node.replace("-", "").replace("_", "").replace(".", "").isalnum() \
            else repr(self.node)  # a hostile node name is shown, not obeyed
        where = [f"node {node}" if self.node else "", self.daemon, self.file]
        where = [w for w in where if w]
        return ": ".join(where + [self.message])

    def located(self, node: str = "", daemon: str = "", file: str = "") -> "RenderError":
        """This error with the missing parts of its location filled in."""
        return RenderError(self.message, self.node or node, self.daemon or daemon, self.file or file)


def renderer(daemon: str, file: str = "") -> Callable[[Callable[..., list["RenderedFile"]]],
                                                      Callable[..., list["RenderedFile"]]]:
    """Decorate a daemon's ``render``: every failure leaves it as a :class:`RenderError` naming
    the node, the daemon and (``file``, when the error names none) the file; an unexpected
    exception too, with its type: never a traceback."""
    def wrap(func: Callable[..., list[RenderedFile]]) -> Callable[..., list[RenderedFile]]:
        @functools.wraps(func)
        def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
            node = str(model.get("node", "")) if isinstance(model, dict) else ""
            try:
                return func(model, secrets, root)
            except RenderError as exc:
                raise exc.located(node, daemon, file) from None
            except Exception as exc:  # pylint: disable=broad-except
                raise RenderError(f"cannot render ({type(exc).__name__}: {exc})", node, daemon, file) from None
        return render
    return wrap


def hostport(address: str, port: int | str) -> str:
    """``192.0.2.1:80`` or ``[2001:db8::1]:80``."""
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


@dataclass(frozen=True)
class RenderedFile:
    """One file a renderer produces: its production path, its text, its mode and (if not root) its group."""

    path: str
    content: str
    mode: int = 0o644
    group: str = ""  # a group that must read it (e.g. bird.conf: 0640 root:bird); "" = root

    @property
    def secret(self) -> bool:
        """Not readable by everybody: its diff and content are never shown."""
        return self.mode & 0o007 == 0


@dataclass(frozen=True)
class CheckResult:
    """What a daemon's own checker said about a candidate."""

    ok: bool
    command: str
    output: str


@dataclass(frozen=True)
class DaemonSpec:
    """Everything the apply machinery needs to know about one daemon.

    ``render`` makes the files; ``check(staging_root, files)`` runs the daemon's
    own checker on candidates rendered under ``staging_root``; ``tree`` is a
    directory copied whole into the staging root before the check (apache2 and
    Icinga2 are validated as a whole tree); ``owned`` are glob patterns of files
    this daemon's renderer owns — an owned file that is no longer rendered is
    removed (``**`` matches any depth). ``wanted(model)`` says whether the node runs
    this daemon at all. ``leaves`` are the other files it writes (its main config):
    when the node stops running the daemon they go too, if they carry :data:`HEADER`
    (see :func:`anycastlb.minion.retire`).
    """

    name: str
    # ``model`` is a NodeModel (anycastlb.model); typed Any here so that renderers may take it as a mapping
    wanted: Callable[[Any], bool]
    render: Callable[[Any, dict[str, Any], str], list[RenderedFile]]
    check: Callable[[str, list[RenderedFile]], CheckResult]
    tree: tuple[str, ...] = ()
    owned: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()
    binary: str = ""
    packages: tuple[str, ...] = field(default_factory=tuple)
    #: Masks the secret values in one of its secret files (``password "**********"``), so its
    #: diff can be shown; a secret file of a daemon without one is never diffed.
    redact: Callable[[str], str] | None = None


def run_checker(cmd: list[str], timeout: float = 60) -> CheckResult:
    """Run a daemon's own checker; a missing binary is a failed check that says so."""
    import subprocess
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return CheckResult(False, " ".join(cmd), f"{cmd[0]} is not installed")
    return CheckResult(proc.returncode == 0, " ".join(cmd), (proc.stdout + proc.stderr).strip())


def under(root: str, path: str) -> str:
    """``path`` (absolute, production) placed under ``root``."""
    if root in ("", "/"):
        return path
    return os.path.join(root, path.lstrip("/"))


def owned_files(spec: "DaemonSpec", root: str = "/") -> list[str]:
    """The files (not directories) under ``root`` that match one of ``spec.owned``, sorted."""
    import glob

    found = {p for pattern in spec.owned for p in glob.glob(under(root, pattern), recursive=True)}
    return sorted(p for p in found if os.path.isfile(p) or os.path.islink(p))


def confine(root: str, path: str) -> str:
    """Where a rendered file ``path`` is written under ``root``, refused unless it stays inside:
    ``path`` must be absolute with no ``..`` segment, and its directory (symlinks resolved,
    as far as it exists) must lie under ``root``."""
    if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise RenderError(f"path {path!r} is not an absolute path without '..': not written", file=path)
    target = under(root, path)
    base = os.path.realpath(root or "/")
    parent = os.path.realpath(os.path.dirname(target))
    if os.path.commonpath([base, parent]) != base:
        raise RenderError(f"path {path!r} would be written outside {base} (to {parent}): not written", file=path)
    return target


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment: StrictUndefined, trimmed blocks, the quoting filters of
    :mod:`anycastlb.render.quote` (one per dialect), HTML autoescape for ``*.html.j2``, and a
    ``finalize`` that refuses to print a string no filter has quoted."""
    from . import quote
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=lambda name: bool(name) and str(name).endswith(".html.j2"),
        finalize=quote.finalize,
    )
    env.globals["HEADER"] = quote.Quoted(HEADER)
    env.filters["under"] = lambda path, root: under(root, path)
    env.filters.update(quote.FILTERS)
    return env


def render_template(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` with ``context``; a missing variable or an unquoted string raises
    :class:`RenderError` naming the template."""
    try:
        return environment().get_template(name).render(**context)
    except RenderError as exc:
        raise exc.located(file=f"template {name}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {type(exc).__name__}: {exc}") from None


def template_file(path: str, template: str, mode: int = 0o644, group: str = "", **context: Any) -> "RenderedFile":
    """The file ``path`` rendered from ``template``; a failure names ``path``."""
    try:
        return RenderedFile(path, render_template(template, **context), mode, group)
    except RenderError as exc:
        raise RenderError(exc.message, exc.node, exc.daemon, path) from None


_REGISTRY: dict[str, DaemonSpec] = {}
#: The order in which daemons are applied on a node (firewall first, monitoring last).
ORDER = ("nftables", "apache2", "haproxy", "healthd", "bird", "icinga2")


def register(spec: DaemonSpec) -> DaemonSpec:
    """Add a daemon to the registry (the renderers of :data:`_MODULES` are added by
    :func:`_load_all`; this is for others, e.g. a test's)."""
    _REGISTRY[spec.name] = spec
    return spec


def daemons() -> list[DaemonSpec]:
    """All registered daemons in apply order."""
    _load_all()
    return [_REGISTRY[n] for n in ORDER if n in _REGISTRY] + [
        s for n, s in sorted(_REGISTRY.items()) if n not in ORDER]


def daemon(name: str) -> DaemonSpec:
    """One daemon's spec by name."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown daemon {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


_MODULES = ("haproxy", "bird", "healthd", "nftables", "apache2", "icinga2")


@functools.lru_cache(maxsize=1)
def _load_all() -> None:
    """Fill the registries, explicitly: each renderer module of :data:`_MODULES` declares its
    ``SPEC`` (and, for a daemon :mod:`anycastlb.service` does not define itself, its
    ``SERVICE``); importing a renderer registers nothing."""
    import importlib

    from ..service import SERVICES
    for mod in _MODULES:
        try:
            m = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
            continue
        _REGISTRY.setdefault(m.SPEC.name, m.SPEC)
        service = getattr(m, "SERVICE", None)
        if service is not None:
            SERVICES.setdefault(service.name, service)
