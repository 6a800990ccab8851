class UserError(Exception):
    """A problem the user can fix (bad config, missing data, damaged file).

    run.py prints it as one line (`xfergan: error: <message>`) and exits with code 2; no traceback.
    The message must say what is wrong and what to do.
    """
