"""The one exception type for mistakes a user can fix (bad config values, missing data, bad paths).

The CLI turns it into a single line on stderr and exit code 2, without a traceback. Anything else
that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the field or path and what is allowed."""
