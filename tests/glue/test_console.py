"""glue/console.py: the user's output on the terminal, everything else in the log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_capture_sends_fd_and_python_output_to_the_log(tmp_path):
    """What a C library writes to fd 2 and what Python prints both land in the log; the
    user's lines reach the real stdout/stderr."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from glue import console
        with console.capture({str(tmp_path)!r}, "t") as log:
            os.write(2, b"[core_worker.cc] noise on fd 2\\n")
            os.write(1, b"noise on fd 1\\n")
            print("Tune table on sys.stdout")
            print("warning on sys.stderr", file=sys.stderr)
            print('{{"result": 1}}', file=console.out())
            console.say("[stage] running ...")
        print(log)
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == '{"result": 1}'
    assert res.stderr == "[stage] running ...\n"
    log = Path(lines[1]).read_text()
    for noise in ("noise on fd 2", "noise on fd 1", "Tune table", "warning on sys.stderr"):
        assert noise in log
    assert "result" not in log


def test_verbose_keeps_everything_live(tmp_path):
    script = textwrap.dedent(
        f"""
        import os
        from glue import console
        with console.capture({str(tmp_path)!r}, "t", verbose=True):
            os.write(2, b"noise\\n")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "noise\n"
