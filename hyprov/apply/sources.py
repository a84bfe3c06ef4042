"""What a managed file holds on the host, from what the plan and state record of it.

The plan and the state keep kong.conf masked (``pg_password = (sensitive)``): the
host's copy carries the password, put back only here, at apply and refresh time.
"""

from __future__ import annotations

from hyprov.model import kongconf


def secret_content(masked: str, password: str | None) -> str:
    """The file as the host has it: the masked text with the password put back (if any)."""
    return masked if password is None else kongconf.with_password(masked, password)
