"""The user-mistake exception: the entry scripts turn it into one line on stderr and exit 2."""


class UsageError(Exception):
    """A mistake the user can mend: the message says what is wrong and how to fix it."""
