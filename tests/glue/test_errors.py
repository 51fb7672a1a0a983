"""glue/errors.py: SIGTERM is an interruption; hooks run before the stack unwinds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from glue.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    handle_sigterm,
    interrupt_status,
    on_terminate,
)


def test_sigterm_raises_terminated_after_running_the_hooks():
    previous = signal.getsignal(signal.SIGTERM)
    seen = []
    remove = on_terminate(lambda: seen.append("hook"))
    try:
        handle_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # the handler runs at the next bytecode boundary
        assert seen == ["hook"]
    finally:
        remove()
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(Terminated(), KeyboardInterrupt)
    assert interrupt_status(Terminated()) == EXIT_TERMINATED == 143
    assert interrupt_status(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130


def test_an_mlflow_run_open_at_sigterm_ends_killed(tmp_path, new_store):
    """A process that gets SIGTERM with a run open: the run is KILLED and the exit 143."""
    uri = new_store(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from glue import tracking
        from glue.errors import handle_sigterm, interrupt_status
        handle_sigterm()
        try:
            with tracking.start_run({uri!r}, "exp", "victim") as run:
                print(run.run_id, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        except KeyboardInterrupt as err:
            sys.exit(interrupt_status(err))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 143, res.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    run_id = res.stdout.split()[0]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
