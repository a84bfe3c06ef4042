"""The ``local`` connection: node N is the directory ``ROOT/N`` on this machine.

Scripts run with ``/bin/sh`` exactly as they would over SSH (on stdin), except that
``$HYPROV_ROOT`` is the node's directory instead of ``""``, so every path a
script builds as ``"$HYPROV_ROOT/etc/kong"`` lands under ``ROOT/N``. This makes
the whole applier testable (and demonstrable) without any host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from hyprov.errors import TransportError
from hyprov.transports.base import ARG_LIMIT, CommandResult, stdin_script

__all__ = ["LocalTransport"]


class LocalTransport:
    """Runs scripts in a subprocess whose ``HYPROV_ROOT`` is the node's directory."""

    def __init__(self, host: str, root: Path) -> None:
        self.host = host
        # Absolute, so scripts that ``cd`` elsewhere still build correct paths.
        self.root = Path(os.path.abspath(root))
        self._ready = False
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Create the node directory (0755) if missing; the local "connection"."""
        with self._lock:
            if self._ready:
                return
            try:
                if not self.root.is_dir():
                    self.root.mkdir(parents=True, exist_ok=True)
                    # mkdir's mode is filtered by the umask: set it explicitly.
                    self.root.chmod(0o755)
            except OSError as exc:
                raise TransportError(
                    self.host, f"cannot create the node directory {self.root}: {exc.strerror}"
                ) from exc
            self._ready = True

    def run(self, script: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run ``script`` with ``/bin/sh`` in the node directory; non-zero exits are returned.

        The script goes on stdin (``sh -s``) unless the caller has stdin of its own
        (then ``sh -c``): see :mod:`hyprov.transports.base`.
        """
        self.connect()
        return self._run(script, stdin, timeout, self.root)

    def read(self, script: str, timeout: float | None = None) -> CommandResult:
        """Run a script that only reads (refresh) without making the node directory: a
        plan changes nothing on disk, and a node not yet applied simply has no files.
        Without the directory the script runs in ``/`` (its paths are ``$HYPROV_ROOT``'s)."""
        return self._run(script, b"", timeout, self.root if self.root.is_dir() else Path("/"))

    def _run(self, script: str, stdin: bytes, timeout: float | None, cwd: Path) -> CommandResult:
        if stdin:
            if len(script.encode()) > ARG_LIMIT:
                raise TransportError(self.host, f"a script of {len(script.encode())} bytes is too large to pass "
                                                f"with stdin of its own (at most {ARG_LIMIT} bytes)")
            argv, data = ["/bin/sh", "-c", script], stdin
        else:
            argv, data = ["/bin/sh", "-s"], stdin_script(script)
        env = dict(os.environ)
        env["HYPROV_ROOT"] = str(self.root)
        try:
            # A new session so a timeout can kill the whole process group,
            # including background children that would keep the pipes open.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(self.host, f"cannot start /bin/sh: {exc.strerror}") from exc
        try:
            stdout, stderr = proc.communicate(input=data, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise TransportError(
                self.host,
                f"command timed out after {timeout:g}s and was killed",
                hint="raise the timeout or check what the command waits for",
            ) from exc
        except BaseException:
            _kill_group(proc)
            raise
        return CommandResult(proc.returncode, stdout, stderr)

    def close(self) -> None:
        """Nothing to release: every run is its own process."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the script and everything it started, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes: give up on them.
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
