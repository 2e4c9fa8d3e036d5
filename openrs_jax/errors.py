"""The error type for mistakes a user can fix (bad path, bad config, wrong checkpoint)."""


class UserError(ValueError):
    """A problem with the user's input. Command-line tools print it as one line, no traceback."""
