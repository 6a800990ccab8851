class UserError(Exception):
    """A problem the user can fix (bad config, missing data, damaged file).

    run.py prints it as one line (`xfergan: error: <message>`) and exits with code 2; no traceback.
    The message must say what is wrong and what to do.
    """


class SelectionError(UserError):
    """A choice (checkpoint monitor, sweep objective, early stopping) that would read a number it
    may not: the same for every job of a sweep, so a multirun stops at once (exit 2)."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """An exception's first message line, for a one-line report (`default` when it has none:
    its type's name unless given)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else (type(e).__name__ if default is None else default)


def instantiate(spec, what: str | None = None, **kwargs):
    """hydra.utils.instantiate, with a UserError raised inside the constructor kept as its one
    line; with `what`, any other failure to build becomes one too ("cannot build <what> ...")."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(spec, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        if what is None:
            raise
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        target = spec.get("_target_") if hasattr(spec, "get") else None
        raise UserError(f"cannot build {what} ({target}): {first[:200]}") from None
