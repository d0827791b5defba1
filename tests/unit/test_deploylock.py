"""One rolling deploy at a time: the lock names the running deploy and frees itself when it is gone."""
from __future__ import annotations

import subprocess
import time

import pytest

from anycastlb import deploylock


@pytest.fixture
def other_deploy():
    """A live process standing for a deploy run by another salt-run."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_second_deploy_is_refused_naming_the_first(tmp_path, other_deploy):
    first = deploylock.acquire(str(tmp_path), pid=other_deploy.pid)
    with pytest.raises(deploylock.DeployLocked) as exc:
        deploylock.acquire(str(tmp_path))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first.started))
    assert f"another deploy is running: anycastlb.orch.deploy started {when} (pid {other_deploy.pid})" in str(exc.value)
    assert deploylock.holder(str(tmp_path)) == first
    # the holder itself may take it again (the orchestration renders, then its states run)
    assert deploylock.acquire(str(tmp_path), pid=other_deploy.pid).pid == other_deploy.pid


def test_lock_of_a_finished_deploy_is_free(tmp_path, other_deploy):
    deploylock.acquire(str(tmp_path), pid=other_deploy.pid)
    other_deploy.kill()
    other_deploy.wait()
    assert deploylock.holder(str(tmp_path)) is None
    assert deploylock.acquire(str(tmp_path)).describe().startswith("anycastlb.orch.deploy started")


def test_release_only_by_the_holder_unless_forced(tmp_path, other_deploy):
    deploylock.acquire(str(tmp_path), pid=other_deploy.pid)
    with pytest.raises(deploylock.DeployLocked, match="not this deploy's"):
        deploylock.release(str(tmp_path))
    assert deploylock.release(str(tmp_path), force=True).pid == other_deploy.pid
    assert deploylock.holder(str(tmp_path)) is None
    assert deploylock.release(str(tmp_path)) is None


def test_a_lock_older_than_max_age_is_free(tmp_path, other_deploy):
    deploylock.acquire(str(tmp_path), pid=other_deploy.pid)
    time.sleep(0.05)
    assert deploylock.holder(str(tmp_path), max_age=0.01) is None
    deploylock.acquire(str(tmp_path), max_age=0.01)


def test_reactor_thread_that_left_its_orchestration_frees_the_lock(tmp_path):
    """The reactor runs deploys in threads of one process: a failed deploy's idle thread holds nothing."""
    import threading

    done, release = threading.Event(), threading.Event()
    holders: list = []

    def failed_deploy() -> None:  # takes the lock, stops (failhard: no unlock), thread stays in the pool
        holders.append(deploylock.acquire(str(tmp_path)))
        done.set()
        release.wait(10)

    t = threading.Thread(target=failed_deploy)
    t.start()
    try:
        assert done.wait(10)
        assert deploylock.holder(str(tmp_path)) is None
        assert deploylock.acquire(str(tmp_path)).pid == holders[0].pid
    finally:
        release.set()
        t.join()


def test_reactor_thread_inside_an_orchestration_holds_the_lock(tmp_path):
    import threading
    import types

    done, release = threading.Event(), threading.Event()

    def body() -> None:
        deploylock.acquire(str(tmp_path))
        done.set()
        release.wait(10)

    # a function named like Salt's runner, in a file named like it: what the stack walk looks for
    src = "def orchestrate(body):\n    body()\n"
    mod = types.ModuleType("fake_state_runner")
    exec(compile(src, "/x/salt/runners/state.py", "exec"), mod.__dict__)
    t = threading.Thread(target=mod.orchestrate, args=(body,))
    t.start()
    try:
        assert done.wait(10)
        with pytest.raises(deploylock.DeployLocked, match="another deploy is running"):
            deploylock.acquire(str(tmp_path))
    finally:
        release.set()
        t.join()


def test_check_refuses_while_a_deploy_runs_and_writes_nothing(tmp_path, other_deploy):
    """What a test=True deploy does: refused while another deploy runs; no lock file of its own."""
    deploylock.check(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing written
    first = deploylock.acquire(str(tmp_path), pid=other_deploy.pid)
    with pytest.raises(deploylock.DeployLocked, match="another deploy is running"):
        deploylock.check(str(tmp_path))
    assert deploylock.holder(str(tmp_path)) == first
    other_deploy.kill()
    other_deploy.wait()
    deploylock.check(str(tmp_path))  # its process is gone: free
