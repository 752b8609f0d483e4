"""The one exception type that the command line turns into a one-line user error."""


class InputError(Exception):
    """Bad input or configuration: the message says what is wrong and what to do."""
