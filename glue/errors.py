"""Errors, exit statuses and interruptions: the one module every entry point shares.

- Bad input (a config, a dataset, a file that cannot be read) is one line on stderr and
  exit status 2 (:data:`EXIT_BAD_INPUT`), never a traceback.
- Ctrl-C (SIGINT) is exit status 130; SIGTERM (``ray job stop``, ``kill PID``, a
  Kubernetes pod stop) is handled the same way — the stage in flight stops, open MLflow
  runs end ``KILLED`` — and exits 143 (128 + 15).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CliError(Exception):
    """An error to report as one line and exit status 2."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM. A ``KeyboardInterrupt``, so every place that cleans
    up after Ctrl-C cleans up after it too."""


# Set by the SIGTERM handler. A Terminated raised inside ``ray.get`` is swallowed by Ray's
# core worker, which raises a plain KeyboardInterrupt instead (a SIGTERM during Ray
# Train's ``fit()``): the interruption that follows a SIGTERM is a termination all the same.
_sigterm_received = False


def _after_sigterm(err: BaseException) -> bool:
    return isinstance(err, Terminated) or _sigterm_received


def interrupt_status(err: KeyboardInterrupt) -> int:
    """The exit status for an interruption: 143 after SIGTERM, 130 after Ctrl-C."""
    return EXIT_TERMINATED if _after_sigterm(err) else EXIT_INTERRUPTED


def interrupt_name(err: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if _after_sigterm(err) else "interrupted"


# Called first thing on SIGTERM, before the exception unwinds the stack: ``ray job stop``
# sends SIGKILL 3 s after SIGTERM, which unwinding Ray Train or Tune may not beat, so what
# must be recorded (open MLflow runs -> KILLED) is recorded here.
_on_terminate: list[Callable[[], None]] = []


def on_terminate(fn: Callable[[], None]) -> Callable[[], None]:
    """Register ``fn`` to run on SIGTERM; returns a function that unregisters it."""
    _on_terminate.append(fn)

    def remove() -> None:
        if fn in _on_terminate:
            _on_terminate.remove(fn)

    return remove


def _sigterm(signum, frame) -> None:
    global _sigterm_received
    _sigterm_received = True
    for fn in list(reversed(_on_terminate)):
        with contextlib.suppress(Exception):  # best effort on the way out
            fn()
    raise Terminated()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (main thread only).

    For short writes that must not be cut in half: a ``KeyboardInterrupt`` raised inside
    an MLflow sqlite write leaves its transaction open, holding the database lock, and the
    cleanup that follows (ending the runs ``KILLED``) then waits on that lock and fails
    with ``database is locked`` instead of exiting 130. Nested blocks deliver once, when
    the outermost ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous: dict[int, object] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler in (signal.SIG_IGN, None):  # ignored, or not installed from Python
            continue
        previous[sig] = handler
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):  # each signal once, in order of arrival
            signal.raise_signal(sig)


def handle_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this (main) thread. Call it again after
    ``ray.init``, which installs a handler of its own (``sys.exit``)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)


def known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line with exit status 2."""
    from avarnet.config import ConfigError
    from avarnet.data.decode import DecodeError
    from avarnet.data.manifest import ManifestError
    from avarnet.features.spec import FeatureSpecMismatch
    from glue.train import TrainingDataError

    return (
        CliError,
        ConfigError,
        DecodeError,
        FileNotFoundError,
        ManifestError,
        FeatureSpecMismatch,
        TrainingDataError,
    )
