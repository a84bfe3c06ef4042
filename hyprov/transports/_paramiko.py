"""paramiko, imported once for every SSH module, without invoke.

paramiko.config imports invoke (~0.1 s of CPU on every run: invoke, its vendored
YAML...) only to run the "Match exec" lines of an ssh_config. It is held back while
paramiko loads; hyprov.transports.sshconfig imports it when a config file has such a line.
Paramiko's own transport-thread logging is silenced here too (see below).
"""

from __future__ import annotations

import logging
import sys

_HOLD_INVOKE = "invoke" not in sys.modules
if _HOLD_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # "import invoke" fails at once
try:
    import paramiko
    import paramiko.config
    from paramiko.common import cMSG_CHANNEL_DATA
    from paramiko.message import Message
finally:
    if _HOLD_INVOKE and "invoke" in sys.modules and sys.modules["invoke"] is None:
        del sys.modules["invoke"]

# Paramiko logs transport-thread failures (with tracebacks) at ERROR; with no
# handler configured Python would print them on stderr. We report the same
# failure as a HyprovError instead, so keep paramiko quiet unless the
# application configures logging itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = ["Message", "cMSG_CHANNEL_DATA", "paramiko"]
