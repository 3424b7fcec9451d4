"""The error the onboard loop stops with (its modules share it)."""


class LoopError(RuntimeError):
    """The loop stopped for a reason the operator must act on; the message says which."""
