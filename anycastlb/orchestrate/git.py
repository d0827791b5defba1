"""The catalog's copies (planned, deployed) and its git checkout on the master."""

from __future__ import annotations


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


def git_checkout(catalog: str, rev: str = "", remote: str = "origin") -> tuple[str, bool]:
    """Move the git work tree holding ``catalog`` to ``rev`` (else fast-forward); → (HEAD, changed).

    ``("", False)`` when the catalog is not in a git work tree. ``rev`` must be a commit
    id (hex): it comes from an event.
    """
    import os
    import re

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
    if rev:
        _git(top, "checkout", "--quiet", "--detach", rev)
    elif has_remote:
        try:
            _git(top, "symbolic-ref", "-q", "HEAD")
        except GitError:  # detached (an earlier rev=): follow the remote's default branch
            _git(top, "checkout", "--quiet", "--detach", f"refs/remotes/{remote}/HEAD")
        else:
            _git(top, "merge", "--quiet", "--ff-only", "@{upstream}")
    new = _git(top, "rev-parse", "HEAD")
    return new, new != head
