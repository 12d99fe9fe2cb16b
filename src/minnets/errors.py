"""The one exception type users see: a problem they can fix, printed by the CLI as one line."""


class MinnetsError(Exception):
    """Bad input or state that the user can fix; the message names the problem and the fix."""
