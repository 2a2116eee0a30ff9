"""Errors the user can act on. Each carries one line that names the offending key, file or tensor."""

import functools
import sys


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


def one_line_errors(exit_code: int = 1):
    """Decorate a subcommand: a MergeflowError becomes ``mergeflow COMMAND: error: ...`` on one
    line of stderr and ``exit_code``."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(args) -> int:
            try:
                return func(args)
            except MergeflowError as err:
                print(f"mergeflow {args.command}: error: {err}", file=sys.stderr)
                return exit_code

        return wrapper

    return decorate
