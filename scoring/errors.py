"""The one exception type that reaches the user as a message, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input or request, explained in plain words.

    The CLI prints ``str(error)`` and exits with status 2; the app shows it in an error box.
    """
