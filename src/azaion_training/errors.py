"""Errors a user can act on. The CLI prints their message (no traceback) and exits with
their exit code: 2 for bad input or configuration, 1 for a failure of the work itself."""


class AzaionError(Exception):
    exit_code = 1


class ConfigError(AzaionError):
    """Missing or invalid configuration; the message names every offending variable."""

    exit_code = 2


class InputError(AzaionError):
    """Bad input from the user (a path, a name, an argument, a file's contents)."""

    exit_code = 2


class OperationFailed(AzaionError):
    """The work could not be done (a service down, an upload refused, a check failed)."""

    exit_code = 1
