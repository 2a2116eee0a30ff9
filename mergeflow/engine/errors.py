"""Errors the user can act on. Each carries one line that names the offending key, file or tensor."""

import functools
import signal
import sys
from contextlib import contextmanager


class MergeflowError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""


class ConfigError(MergeflowError):
    """The merge config is invalid; the message starts with the config key path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}" if key else message)
        self.key = key


class PreflightError(MergeflowError):
    """The inputs cannot be merged as configured (architecture, missing tensor, shape)."""


class OutputError(MergeflowError):
    """The output location cannot be written as asked (an input, a user's directory, no space)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def signals_interrupt():
    """SIGINT and SIGTERM (kill, timeout, SLURM) raise ``Interrupted`` in the main thread, so the
    merge unwinds and removes its staging directory; a second signal during that is ignored."""
    def interrupt(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def one_line_errors(exit_code: int = 1):
    """Decorate a subcommand: a MergeflowError becomes ``mergeflow COMMAND: error: ...`` on one
    line of stderr and ``exit_code``; SIGINT/SIGTERM unwind it (its ``finally`` blocks clean up)
    and end it with one ``interrupted`` line and 128+signum."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(args) -> int:
            try:
                with signals_interrupt():
                    return func(args)
            except Interrupted as stop:
                print(f"mergeflow {args.command}: interrupted by {signal.Signals(stop.signum).name}", file=sys.stderr)
                return 128 + stop.signum
            except MergeflowError as err:
                print(f"mergeflow {args.command}: error: {err}", file=sys.stderr)
                return exit_code

        return wrapper

    return decorate
