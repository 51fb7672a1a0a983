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


def test_sigterm_raises_terminated_after_running_the_hooks(monkeypatch):
    from glue import errors

    monkeypatch.setattr(errors, "_sigterm_received", False)  # put back afterwards
    assert isinstance(Terminated(), KeyboardInterrupt)
    assert interrupt_status(Terminated()) == EXIT_TERMINATED == 143
    assert interrupt_status(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
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
    # Once SIGTERM came, an interruption re-raised as a plain KeyboardInterrupt (Ray's
    # ``ray.get`` does so) is still reported as the termination it is.
    assert interrupt_status(KeyboardInterrupt()) == EXIT_TERMINATED
    assert errors.interrupt_name(KeyboardInterrupt()) == "terminated (SIGTERM)"


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


def test_signals_deferred_delivers_a_ctrl_c_when_the_block_ends():
    from glue.errors import signals_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            with signals_deferred():  # nested: delivered once, by the outer block
                signal.raise_signal(signal.SIGINT)
                signal.sigtimedwait([], 0)
                steps.append("inner")
            steps.append("outer")
        steps.append("after")  # not reached: the Ctrl-C lands here
    assert steps == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    "sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_in_the_middle_of_an_mlflow_write_still_ends_the_runs_killed(
    tmp_path, new_store, sig, status
):
    """The signal arrives while sqlite holds the write lock (inside ``log_batch``'s
    transaction, just after the first metric row went in). The write completes, then the
    process stops: the metric is stored, both runs end KILLED, exit 130 / 143. Cut in the
    middle, the metric was lost and the cleanup could find the store still locked by the
    cut transaction (``database is locked``, exit 1: a CI run of the interrupted
    pipeline)."""
    uri = new_store(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import sqlalchemy
        from sqlalchemy.engine import Engine
        from glue import tracking
        from glue.errors import handle_sigterm, interrupt_status

        def cut(conn, cursor, statement, params, context, executemany):  # the row is in
            if statement.lstrip().upper().startswith("INSERT INTO METRICS"):
                signal.raise_signal({int(sig)})

        handle_sigterm()
        try:
            with tracking.start_run({uri!r}, "exp", "pipeline") as parent:
                print(parent.run_id, flush=True)
                with tracking.start_run(
                    {uri!r}, "exp", "train", parent_run_id=parent.run_id
                ) as child:
                    print(child.run_id, flush=True)
                    sqlalchemy.event.listen(Engine, "after_cursor_execute", cut)
                    child.log_metrics({{"loss": 1.5}}, step=1)
                    sqlalchemy.event.remove(Engine, "after_cursor_execute", cut)
                    print("not reached", flush=True)
        except KeyboardInterrupt as err:
            sys.exit(interrupt_status(err))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == status, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    parent_id, child_id = res.stdout.split()
    client = MlflowClient(uri)
    assert client.get_run(parent_id).info.status == "KILLED"
    assert client.get_run(child_id).info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(child_id, "loss")] == [1.5]
