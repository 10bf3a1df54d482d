"""Errors that are the user's to fix."""


class UserError(Exception):
    """A problem with the user's input: message says what and how to fix; the CLI prints it without a traceback."""
