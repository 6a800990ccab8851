class UserError(Exception):
    """A problem the user can fix (bad config, missing data, damaged file).

    run.py prints it as one line (`xfergan: error: <message>`) and exits with code 2; no traceback.
    The message must say what is wrong and what to do.
    """


class SelectionError(UserError):
    """A choice (checkpoint monitor, sweep objective, early stopping) that would read a number it
    may not: the same for every job of a sweep, so a multirun stops at once (exit 2)."""
