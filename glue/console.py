"""What a person at the terminal sees, and the log file that holds everything else.

At the default verbosity a run shows its own lines only: one line per stage, a progress
bar per long stage, warnings about the user's data or config, the summary (or the one
JSON document of ``--json`` on stdout). Everything else that the process prints — Ray's
log lines and the worker output it forwards, C++ warnings from Ray's core worker,
deprecation notices, Tune's tables, MLflow's database messages, tracebacks that Ray logs
and recovers from — goes to a log file whose path the summary names. ``-v``/``--verbose``
shows it all live instead.

It works at the file-descriptor level (``dup2`` of 1 and 2 onto the log), because much of
that output never passes through Python's ``sys.stdout``: the core worker writes to fd 2
directly. The user's own output goes to duplicates of the original descriptors, which
:func:`out` and :func:`err` return. When stdout/stderr are not real files (a test's
captured streams) nothing is redirected and the streams are used as they are.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_streams: dict[str, TextIO] = {}
_last_log: list[Path] = []


def out() -> TextIO:
    """The user's stdout (results, ``--json``)."""
    return _streams.get("out", sys.stdout)


def err() -> TextIO:
    """The user's stderr (stage lines, progress bars, warnings, errors)."""
    return _streams.get("err", sys.stderr)


def say(msg: str) -> None:
    """One line for the user on stderr."""
    print(msg, file=err(), flush=True)


def log_path() -> Path | None:
    """The log file of the current (or last) capture, if any."""
    return _last_log[-1] if _last_log else None


def log_hint(form: str = " (log: {})") -> str:
    """`` (log: PATH)`` when there is a log file, else nothing."""
    path = log_path()
    return form.format(path) if path is not None else ""


def report_failure(error: BaseException) -> int:
    """An unexpected error: its traceback to the log file (to stderr when there is none),
    one line for the user; returns exit status 1."""
    import traceback

    path = log_path()
    if path is None:
        traceback.print_exception(error, file=err())
    else:
        with open(path, "a") as f:
            traceback.print_exception(error, file=f)
    say(f"avarnet: error: {type(error).__name__}: {error}{log_hint(' (traceback in {})')}")
    return 1


def _fd_backed(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


@contextmanager
def capture(log_dir: str | os.PathLike, name: str, *, verbose: bool = False) -> Iterator[Path]:
    """Send everything but the user's own output to ``log_dir/<name>-<time>.log``.

    Yields the log's path (written to even when ``verbose``: then it holds nothing, and
    the output stays on the terminal). Nested captures reuse the outer one."""
    if _streams:  # already capturing (a verb inside the pipeline)
        yield _last_log[-1]
        return
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    _last_log.append(path)
    if verbose or not (_fd_backed(sys.stdout) and _fd_backed(sys.stderr)):
        yield path
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    saved_sys = sys.stdout, sys.stderr
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _streams["out"] = os.fdopen(os.dup(saved_out), "w", buffering=1)
    _streams["err"] = os.fdopen(os.dup(saved_err), "w", buffering=1)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # Python-level writes too (print() to sys.stdout by Tune, warnings): they need not go
    # through fd 1/2 when sys.stdout was replaced (a test runner's capture).
    log_text = os.fdopen(log_fd, "w", buffering=1)
    sys.stdout = sys.stderr = log_text
    try:
        yield path
    finally:
        log_text.flush()
        sys.stdout, sys.stderr = saved_sys
        # log_text stays open: a thread of Ray's may have fetched sys.stderr just before
        # and still write to it.
        for stream in (_streams.pop("out"), _streams.pop("err")):
            stream.flush()
            stream.close()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)


def add_verbose_flag(parser) -> None:
    """``-v``/``--verbose`` on an ``argparse`` parser."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray's, MLflow's and the workers' own output live instead of in the log file",
    )


def progress_bar(total: int | None, desc: str, unit: str, *, disable: bool = False):
    """A tqdm bar on the user's stderr."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=err(),
        disable=disable,
        leave=False,
        dynamic_ncols=True,
    )
