"""``.ci/setup`` installs packages and starts or stops no daemon on the host (issue 18).

Run against fakes of ``dpkg``, ``apt-get`` and the venv's tools (a real ``apt-get
install`` cannot run in a unit test): the fake ``apt-get`` asks the policy-rc.d the
script installed whether ``invoke-rc.d ssh start``/``stop`` may run, as Debian's
postinst scripts do, and records the answer.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _fake(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _run(tmp_path: Path, policy: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "setup", repo / ".ci" / "setup")
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("python", "pip", "salt-call"):
        _fake(venv / tool, f'echo "{tool} $*" >> {log}')
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _fake(bin_ / "dpkg", 'case "$2" in haproxy|openssh-server) exit 1;; esac; exit 0')
    _fake(bin_ / "apt-get", f'echo "apt-get $*" >> {log}\n'
          f'if [ "$1" = install ]; then for a in start stop; do "{policy}" ssh "$a"; '
          f'echo "policy ssh $a: $?" >> {log}; done; fi')
    for daemon_tool in ("systemctl", "service", "invoke-rc.d", "pkill", "killall"):
        _fake(bin_ / daemon_tool, f'echo "{daemon_tool} $*" >> {log}')
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "ANYCASTLB_POLICY_RC_D": str(policy)}
    proc = subprocess.run(["bash", str(repo / ".ci" / "setup")], env=env, capture_output=True, text=True, timeout=60)
    return proc, log


def test_setup_forbids_daemon_starts_during_install_and_stops_nothing(tmp_path):
    policy = tmp_path / "policy-rc.d"
    proc, log = _run(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert any(c.startswith("apt-get install") and "haproxy" in c and "openssh-server" in c for c in calls), calls
    assert "policy ssh start: 101" in calls and "policy ssh stop: 101" in calls
    assert not [c for c in calls if c.split()[0] in ("systemctl", "service", "invoke-rc.d", "pkill", "killall")]
    assert not policy.exists(), "the temporary policy-rc.d must be removed after the install"
    assert "/etc/init.d" not in (REPO / ".ci" / "setup").read_text()


def test_setup_keeps_an_existing_policy_rc_d(tmp_path):
    policy = tmp_path / "policy-rc.d"
    _fake(policy, "# the site's own\nexit 0")
    proc, log = _run(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    assert policy.read_text() == "#!/bin/sh\n# the site's own\nexit 0\n"
    assert "policy ssh start: 0" in log.read_text().splitlines()
