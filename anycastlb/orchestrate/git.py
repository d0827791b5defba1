"""The catalog's copies (planned, deployed) and its git checkout on the master."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .lint import Lint


def snapshot(catalog: str, dest: str) -> str:
    """Copy the catalog (a file or a directory) to ``dest``, replacing what was there; return the copy's path."""
    import os
    import shutil

    tmp = f"{dest}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    copy = os.path.join(tmp, os.path.basename(os.path.normpath(catalog)))
    if os.path.isdir(catalog):
        shutil.copytree(catalog, copy)
    else:
        shutil.copy2(catalog, copy)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return os.path.join(dest, os.path.basename(copy))


def snapshot_path(dest: str) -> str | None:
    """The catalog copy :func:`snapshot` left in ``dest``, if any."""
    import os

    try:
        (name,) = os.listdir(dest)
    except (OSError, ValueError):
        return None
    return os.path.join(dest, name)


class GitError(RuntimeError):
    """The catalog checkout could not be brought to the wanted revision."""


def _git(cwd: str, *args: str, timeout: float = 60) -> str:
    import subprocess

    r = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise GitError(f"git {' '.join(args)} in {cwd}: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout.strip()


def git_checkout(catalog: str, rev: str = "", remote: str = "origin", staging: str = "",
                 check: "Callable[[str], Lint] | None" = None) -> tuple[str, bool]:
    """Move the git work tree holding ``catalog`` to ``rev`` (else the remote's head); → (HEAD, changed).

    ``("", False)`` when the catalog is not in a git work tree. ``rev`` must be a commit
    id (hex): it comes from an event. With ``check``, the commit is first exported into
    ``staging`` and ``check`` (a lint) judges the catalog there; a refusal raises
    :class:`StageRefused` and the work tree (what the ext_pillar reads) is not touched.
    """
    import os
    import re
    import shutil

    if rev and not re.fullmatch(r"[0-9a-f]{7,64}", rev):
        raise GitError(f"rev {rev!r} is not a commit id")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", remote):
        raise GitError(f"remote {remote!r} is not a remote name")
    d = catalog if os.path.isdir(catalog) else os.path.dirname(os.path.abspath(catalog))
    try:
        top = _git(d, "rev-parse", "--show-toplevel")
    except (GitError, OSError):
        return "", False
    head = _git(top, "rev-parse", "HEAD")
    if rev and head.startswith(rev):
        return head, False
    has_remote = remote in _git(top, "remote").split()
    if has_remote:
        _git(top, "fetch", "--quiet", remote)
    on_branch = True
    try:
        _git(top, "symbolic-ref", "-q", "HEAD")
    except GitError:
        on_branch = False
    if rev:
        target = _resolve(top, rev, None)
    elif not has_remote:
        return head, False
    elif on_branch:
        target = _git(top, "rev-parse", "--verify", "--quiet", "@{upstream}^{commit}")
    else:  # detached (an earlier rev=): follow the remote's default branch
        target = _resolve(top, "", remote)
    if target == head:
        return head, False
    if check is not None:
        dest = os.path.join(staging, target)
        _export(top, target, dest)
        try:
            verdict = check(os.path.join(dest, os.path.relpath(os.path.abspath(catalog), top)))
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if not verdict.ok:
            raise StageRefused(target, verdict, dest)
    if rev or not on_branch:
        _git(top, "checkout", "--quiet", "--detach", target)
    else:
        _git(top, "merge", "--quiet", "--ff-only", target)
    new = _git(top, "rev-parse", "HEAD")
    return new, new != head


class StageRefused(GitError):
    """The staged commit's catalog was refused by lint: the live catalog stays as it is."""

    def __init__(self, commit: str, verdict: "Lint", root: str = "") -> None:
        super().__init__(f"commit {commit[:12]}: {verdict.summary}; the catalog the minions get stays as it was")
        self.commit, self.verdict = commit, verdict
        # the staged copy is gone once refused: name the files as the repository does
        prefix = root.rstrip("/") + "/"
        self.errors = [e.replace(prefix, "") for e in verdict.errors] if root else list(verdict.errors)


# ----------------------------------------------------------------- staged catalogs


def _resolve(gitdir: str, rev: str, remote: str | None) -> str:
    """The commit id of ``rev`` (a commit id) or, ``rev`` empty, of the default branch's head."""
    import re

    if rev and not re.fullmatch(r"[0-9a-f]{7,64}", rev):
        raise GitError(f"rev {rev!r} is not a commit id")
    if rev:
        return _git(gitdir, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    ref = f"refs/remotes/{remote}/HEAD" if remote else "HEAD"
    return _git(gitdir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def _export(gitdir: str, commit: str, dest: str) -> None:
    """The tree of ``commit`` as plain files in ``dest`` (made here; nothing of git's in it)."""
    import io
    import os
    import subprocess
    import tarfile

    r = subprocess.run(["git", "-C", gitdir, "archive", "--format=tar", commit], capture_output=True, timeout=120)
    if r.returncode != 0:
        raise GitError(f"git archive {commit} in {gitdir}: {r.stderr.decode(errors='replace').strip()[-500:]}")
    tmp = f"{dest}.tmp"
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def mirror(repo: str, gitdir: str) -> None:
    """Bring ``gitdir`` (a bare mirror on the master, made on first use) up to ``repo`` (a path or URL)."""
    import os

    if not os.path.isdir(gitdir):
        os.makedirs(os.path.dirname(gitdir), exist_ok=True)
        _git(os.path.dirname(gitdir), "init", "--quiet", "--bare", gitdir)
    _git(gitdir, "fetch", "--quiet", "--prune", "--force", repo, "+refs/heads/*:refs/heads/*", "+HEAD:refs/remotes/origin/HEAD",
         timeout=120)


def switch(live: str, release: str) -> None:
    """Point the symlink ``live`` at ``release`` in one step (a new link renamed over the old one)."""
    import os

    tmp = f"{live}.switch"
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass
    os.symlink(release, tmp)
    os.replace(tmp, live)


def prune(releases: str, keep: set[str], count: int = 5) -> list[str]:
    """Remove all but the ``count`` newest releases (never those in ``keep``); → the removed ones."""
    import os
    import shutil

    try:
        names = [n for n in os.listdir(releases) if not n.endswith(".tmp")]
    except FileNotFoundError:
        return []
    names.sort(key=lambda n: os.stat(os.path.join(releases, n)).st_mtime, reverse=True)
    gone = [n for n in names[count:] if os.path.join(releases, n) not in keep and n not in keep]
    for n in gone:
        shutil.rmtree(os.path.join(releases, n), ignore_errors=True)
    return gone


def stage_release(repo: str, live: str, relpath: str, gitdir: str, rev: str = "",
                  check: "Callable[[str], Lint] | None" = None, keep: int = 5) -> tuple[str, bool]:
    """Staged catalogs with an atomic switch: fetch ``repo`` into the mirror ``gitdir``, export
    ``rev`` (else the default branch's head) into ``<live>.releases/<commit>``, let ``check`` judge
    ``<release>/<relpath>`` there, and only then point the symlink ``live`` at the release (the
    ext_pillar reads ``<live>/<relpath>``); → (commit, changed). A refusal raises :class:`StageRefused`,
    removes the release and leaves ``live`` alone.
    """
    import os
    import shutil

    mirror(repo, gitdir)
    target = _resolve(gitdir, rev, "origin")
    releases = f"{live.rstrip('/')}.releases"
    release = os.path.join(releases, target)
    if os.path.islink(live) and os.path.realpath(live) == os.path.realpath(release):
        return target, False
    os.makedirs(releases, exist_ok=True)
    _export(gitdir, target, release)
    if check is not None:
        verdict = check(os.path.join(release, relpath))
        if not verdict.ok:
            shutil.rmtree(release, ignore_errors=True)
            raise StageRefused(target, verdict, release)
    old = os.path.realpath(live) if os.path.islink(live) else ""
    if os.path.exists(live) and not os.path.islink(live):
        raise GitError(f"{live} is not a symlink: move it away once, the deploy then manages it")
    switch(live, release)
    prune(releases, {release, old}, keep)
    return target, True
