"""Icinga 2 beside a site's own: conf.d mode, contacts and mail notifications, each checked by ``icinga2 daemon -C``.

conf.d mode adds conf.d/anycastlb/ only; the check runs on a copy of the whole tree with
the site's icinga2.conf, which reads all of conf.d (Debian's stock objects included), so a
clash with the site's objects is refused before anything is swapped.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import apply_daemon, stage_and_check
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import icinga2

CAMPUS_TEXT = (Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml").read_text()
OURS = "/etc/icinga2/conf.d/anycastlb"
needs_icinga = pytest.mark.skipif(not shutil.which("icinga2") or not Path("/etc/icinga2/conf.d/commands.conf").exists(),
                                  reason="icinga2 with Debian's stock /etc/icinga2 is needed")
CONTACTS = """
monitoring: {icinga: MODE}
contacts:
  netops: {email: netops@example.org, display_name: Network operations}
"""


def catalog(tmp_path: Path, mode: str, contacts: bool = True) -> Any:
    text = CAMPUS_TEXT.replace("\nnodes:", (CONTACTS.replace("MODE", mode) if contacts else
                                            f"\nmonitoring: {{icinga: {mode}}}\n") + "\nnodes:", 1)
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    return compile_catalog(p)


def files(model: dict[str, Any]) -> dict[str, str]:
    return {f.path: f.content for f in icinga2.render(model, {}, "/")}


def site_tree(tmp_path: Path) -> Path:
    """A copy of Debian's stock /etc/icinga2 plus an object of the site's own."""
    root = tmp_path / "root"
    shutil.copytree("/etc/icinga2", root / "etc/icinga2", symlinks=True)
    (root / "etc/icinga2/conf.d/site.conf").write_text('object Host "printserver42" { check_command = "dummy" }\n')
    return root


def test_standalone_users_get_email_and_mail_notifications(tmp_path: Path) -> None:
    f = files(catalog(tmp_path, "standalone").nodes["mon1"])
    users = f[f"{OURS}/users.conf"]
    assert 'email = "netops@example.org"' in users and 'display_name = "Network operations"' in users
    base = f[f"{OURS}/00-base.conf"]
    assert 'command = "mail-host-notification"' in base and 'command = "mail-service-notification"' in base
    assert 'command = "anycastlb-log-host"' in base, "the log notification stays"
    assert 'include_recursive "conf.d", "commands.conf"' in f["/etc/icinga2/icinga2.conf"]


def test_campus_without_contacts_mails_nobody() -> None:
    f = files(compile_catalog(Path(__file__).resolve().parents[2] / "anycastlb/examples/campus.yaml").nodes["mon1"])
    assert "mail-" not in f[f"{OURS}/00-base.conf"] and "email" not in f[f"{OURS}/users.conf"]
    assert "commands.conf" not in f["/etc/icinga2/icinga2.conf"]


@needs_icinga
def test_standalone_with_contacts_passes_icinga2_check(tmp_path: Path) -> None:
    ok, out = stage_and_check(icinga2.SPEC, catalog(tmp_path, "standalone").nodes["mon1"], {}, "/")
    assert ok, out


def test_confd_mode_writes_only_conf_d_anycastlb(tmp_path: Path) -> None:
    f = files(catalog(tmp_path, "conf.d").nodes["mon1"])
    ours = sorted(p for p in f if p.startswith("/etc/"))
    assert ours == [f"{OURS}/00-base.conf", f"{OURS}/hosts.conf", f"{OURS}/poll.json", f"{OURS}/services.conf",
                    f"{OURS}/users.conf"]
    assert not any(p.startswith("/etc/icinga2/") and not p.startswith(OURS) for p in icinga2.SPEC.owned)


@needs_icinga
def test_confd_mode_passes_with_the_sites_tree_and_leaves_it_alone(tmp_path: Path) -> None:
    root = site_tree(tmp_path)
    before = {p: p.read_bytes() for p in (root / "etc/icinga2").rglob("*") if p.is_file()}

    class Control:
        calls: list[str] = []

        def running(self, daemon: str) -> bool:
            return True

        def reload_or_start(self, daemon: str) -> str:
            self.calls.append(daemon)
            return "reloaded"

        start = reload_or_start

    res = apply_daemon("icinga2", catalog(tmp_path, "conf.d").nodes["mon1"], root=str(root), control=Control())
    assert res.result is True, res.comment
    after = {p: p.read_bytes() for p in (root / "etc/icinga2").rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p in before} == before, "a site file was changed or removed"
    assert sorted(str(p.relative_to(root)) for p in after if p not in before) == [
        f"etc/icinga2/conf.d/anycastlb/{n}" for n in ("00-base.conf", "hosts.conf", "poll.json", "services.conf",
                                                      "users.conf")]
    assert (root / "etc/icinga2/icinga2.conf").read_bytes() == Path("/etc/icinga2/icinga2.conf").read_bytes()


@needs_icinga
def test_confd_mode_clash_with_a_site_object_is_refused(tmp_path: Path) -> None:
    root = site_tree(tmp_path)
    (root / "etc/icinga2/conf.d/site.conf").write_text('object Host "lb1" { check_command = "dummy" }\n')
    ok, out = stage_and_check(icinga2.SPEC, catalog(tmp_path, "conf.d").nodes["mon1"], {}, str(root))
    assert not ok
    assert "Object 'lb1' of type 'Host' re-defined" in out and "site.conf" in out, out


@needs_icinga
def test_confd_mode_check_reads_the_stock_conf_d(tmp_path: Path) -> None:
    """Debian's stock conf.d is part of the check: break one of its files and the check fails."""
    root = site_tree(tmp_path)
    (root / "etc/icinga2/conf.d/services.conf").write_text("apply Service {\n")
    ok, out = stage_and_check(icinga2.SPEC, catalog(tmp_path, "conf.d").nodes["mon1"], {}, str(root))
    assert not ok and "services.conf" in out, out


def refused(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "catalog.yaml"
    p.write_text(text)
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(p)
    return [str(e) for e in exc.value.errors]


@pytest.mark.parametrize("email", ['"a b@example.org"', '"x@example.org\\nBcc: y@example.org"', '"net\\"ops@example.org"',
                                   "netops", "netops@localhost", '"netops@exa mple.org"', "'@example.org'",
                                   # Debian's mail scripts pass the address unquoted to mail(1):
                                   "'-Sx=y@example.org'", "'a*b@example.org'", "'a$(id)@example.org'"])
def test_bad_email_refused_with_place(tmp_path: Path, email: str) -> None:
    text = CAMPUS_TEXT.replace("\nnodes:", f"\ncontacts:\n  netops: {{email: {email}}}\n\nnodes:", 1)
    errs = refused(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("  netops: {email"))
    assert any(f"catalog.yaml:{line}: contact 'netops', key 'email'" in e for e in errs), errs


@pytest.mark.parametrize("extra, line_needle, where", [
    ("contacts:\n  netops: {email: n@example.org, pager: 123}\n", "  netops: {email", "contact 'netops', key 'pager'"),
    ("contacts:\n  other: {email: o@example.org}\n", "notify: [netops]", "service 'www', key 'monitor.notify[0]'"),
    ("monitoring: {icinga: replace}\n", "monitoring: {icinga", "monitoring, key 'icinga'"),
    ("monitoring: {zone: x}\n", "monitoring: {zone", "monitoring, key 'zone'"),
])
def test_bad_monitoring_keys_refused_with_place(tmp_path: Path, extra: str, line_needle: str, where: str) -> None:
    text = CAMPUS_TEXT.replace("\nnodes:", "\n" + extra + "\nnodes:", 1)
    errs = refused(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if line_needle in t)
    assert any(f"catalog.yaml:{line}: {where}" in e for e in errs), errs


@needs_icinga
def test_the_widest_accepted_contact_passes_icinga2_check(tmp_path: Path) -> None:
    """What lint accepts, the checker accepts: every character the grammars allow, in both modes."""
    text = CAMPUS_TEXT.replace("\nnodes:", "\ncontacts:\n  netops: {email: a.b+c_d-9@mail-1.example.org, "
                               "display_name: \"O'Brien & Co. <ops> $user.name$ {x} #y // ${z}\"}\n\nnodes:", 1)
    for mode in ("standalone", "conf.d"):
        p = tmp_path / f"{mode}.yaml"
        p.write_text(text.replace("\ncontacts:", f"\nmonitoring: {{icinga: {mode}}}\ncontacts:", 1))
        model = compile_catalog(p).nodes["mon1"]
        assert "O'Brien" in files(model)[f"{OURS}/users.conf"]
        ok, out = stage_and_check(icinga2.SPEC, model, {}, "/")
        assert ok, out


@pytest.mark.parametrize("name", ["Net\u2028ops", "Net\u2029ops", "Net\u202eops", "Net\nops", 'Net "ops"',
                                  "Net\\ops", "x" * 65, ""])
def test_display_names_that_no_dialect_can_carry_are_refused_at_the_door(tmp_path: Path, name: str) -> None:
    """lint ⊇ render: a separator or bidi control that the Icinga2 quoting filter would refuse at render
    time is refused by lint, naming the place."""
    import json
    text = CAMPUS_TEXT.replace("\nnodes:", "\ncontacts:\n  netops: {email: n@example.org, display_name: "
                               + json.dumps(name) + "}\n\nnodes:", 1)
    errs = refused(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "  netops: {email" in t)
    assert any(f"catalog.yaml:{line}: contact 'netops', key 'display_name'" in e for e in errs), errs
