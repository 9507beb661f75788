"""ForkSafeLock: a lock another thread held at a fork is free in the child."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from skllmprob._forksafe import ForkSafeLock


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child():
    lock, held, release = ForkSafeLock(), threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: a plain lock would wait here until the alarm
        signal.alarm(5)
        with lock:
            pass
        os._exit(0)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with lock:  # and the parent's lock works as before
        pass
