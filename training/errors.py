"""The one error a user can cause: the CLI prints its message on one line and exits 2.

Raise it early, with the bad value and the rule it broke. Anything else is a bug and keeps
its traceback.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """A problem with the user's input (config, dataset, artifact), not with Sightline."""
