"""The ``ssh`` connection: paramiko, one TCP connection per host for the whole run.

Design points (each one is a measured or a security requirement):

* **One connection per host, one channel per command.** Opening an SSH
  connection costs a key exchange and an authentication (several round trips
  and CPU); a channel costs one round trip. ``run`` opens a fresh ``session``
  channel on the cached :class:`paramiko.Transport` every time.
* **TCP_NODELAY.** We create the socket ourselves and disable Nagle: SSH
  sends many small packets (channel open, exec, EOF) and Nagle plus the peer's
  delayed ACK stall them (measured on the test hosts: ~50 ms per command
  without it, ~6 ms with it).
* **Thread-safe channels.** Many threads share one connection. Stdin and EOF
  are sent holding the channel lock (see ``_send_locked``): paramiko's own
  ``send``/``shutdown_write`` can race its automatic CLOSE reply, and sshd
  then drops the whole connection.
* **Host keys are always verified.** ``strict`` refuses unknown and changed
  keys; ``accept-new`` appends unknown keys to the known_hosts file (under a
  lock, shared by all transports of the run) and still refuses changed ones.
  Paramiko's ``AutoAddPolicy`` is never used.
* **Retry rule.** Opening the channel is tried at most twice per ``run``,
  because until a channel exists no process can have started on the host. If
  the connection turns out to be dead (found dead before use, or dropped
  while opening the channel) it is re-established first; a live connection is
  never closed over a refused or slow channel open, since other threads may
  have commands in flight on it. Once the exec request has been sent the
  command may be running, so any later failure is raised as
  :class:`TransportError` and never retried (no double execution).
* **Errors.** Every paramiko/socket/OS error is translated into
  :class:`ConnectError`, :class:`HostKeyError` or :class:`TransportError`
  with a reason and a hint; paramiko's own thread tracebacks are silenced.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from hyprov.errors import ConnectError, HostKeyError, TransportError
from hyprov.transports._paramiko import Message, cMSG_CHANNEL_DATA, paramiko
from hyprov.transports.base import ARG_LIMIT, CommandResult, stdin_script
from hyprov.transports.knownhosts import KnownHosts, fingerprint
from hyprov.transports.sshconfig import SSHParams, _load_key, _parse_jump, _resolve, _Target

__all__ = ["SSHTransport"]



_RECV_CHUNK = 1 << 16
_SEND_CHUNK = 1 << 15
_SUDO_PASSWORD = re.compile(
    rb"^sudo: (a password is required|a terminal is required|no tty present)", re.MULTILINE
)
_DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


# --------------------------------------------------------------------------- bastions


@dataclass
class _BastionSlot:
    transport: SSHTransport
    users: int = 0


@dataclass
class _BastionPool:
    """Jump-host connections shared by all targets behind them (one per bastion, refcounted)."""

    slots: dict[tuple[object, ...], _BastionSlot] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(
        self, params: SSHParams, known_hosts: KnownHosts, extra: tuple[str, ...]
    ) -> SSHTransport:
        key = (
            params.address,
            params.port,
            params.user,
            params.proxy_jump,
            params.known_hosts,
            params.host_key_policy,
            params.ssh_config,
            extra,
            id(known_hosts),
        )
        with self.lock:
            slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = _BastionSlot(
                    SSHTransport(params, known_hosts, _extra_identities=extra)
                )
            slot.users += 1
            return slot.transport

    def release(self, transport: SSHTransport) -> None:
        with self.lock:
            for key, slot in list(self.slots.items()):
                if slot.transport is transport:
                    slot.users -= 1
                    if slot.users <= 0:
                        del self.slots[key]
                        transport.close()
                    return


_bastions = _BastionPool()


# --------------------------------------------------------------------------- the transport


class SSHTransport:
    """One node over SSH: lazily connected, reused for every command, safe to share between threads."""

    def __init__(
        self,
        params: SSHParams,
        known_hosts: KnownHosts,
        *,
        _extra_identities: tuple[str, ...] = (),
    ) -> None:
        self.host = params.host
        self.params = params
        self._known_hosts = known_hosts
        self._extra_identities = _extra_identities
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        self._bastion: SSHTransport | None = None
        self._target: _Target | None = None
        #: How many SSH connections this transport has opened (1 in a healthy run).
        self.connections_opened = 0

    # -- connection ------------------------------------------------------------------

    @property
    def connection(self) -> paramiko.Transport | None:
        """The live paramiko transport, if connected (for inspection and tests)."""
        return self._transport

    def connect(self) -> None:
        """Connect now (otherwise the first ``run`` does): resolve, TCP, handshake, host key, auth."""
        self._ensure()

    def _ensure(self) -> paramiko.Transport:
        with self._lock:
            t = self._transport
            if t is not None and t.is_active():
                return t
            if t is not None:
                self._transport = None
                t.close()
            t = self._open()
            self._transport = t
            self.connections_opened += 1
            return t

    def _drop(self, dead: paramiko.Transport) -> None:
        """Forget ``dead`` if it is still the cached connection (another thread may have replaced it)."""
        with self._lock:
            if self._transport is dead:
                self._transport = None
        dead.close()

    def _open(self) -> paramiko.Transport:
        p = self.params
        target = self._target
        if target is None:
            target = self._target = _resolve(p, self._extra_identities)
        where = f"{target.hostname}:{target.port}"
        sock = self._socket(target, where)
        t: paramiko.Transport | None = None
        try:
            t = paramiko.Transport(sock)
            t.banner_timeout = p.connect_timeout
            t.handshake_timeout = p.connect_timeout
            t.auth_timeout = max(p.connect_timeout, 10.0)
            names = target.host_key_names
            preferred = self._known_hosts.preferred_key_types(names, target.known_hosts)
            if preferred:
                opts = t.get_security_options()
                available = list(opts.key_types)
                first = [k for k in preferred if k in available]
                opts.key_types = first + [k for k in available if k not in first]
            try:
                t.start_client(timeout=p.connect_timeout)
                # start_client returns quietly on timeout; this then raises.
                server_key = t.get_remote_server_key()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                reason = _reason(exc)
                if t.is_active() or reason == "No existing session":
                    reason = f"no answer within {p.connect_timeout:g}s"
                raise ConnectError(
                    self.host,
                    f"SSH handshake with {where} failed: {reason}",
                    hint="check that an SSH server listens there (and that the port is right)",
                ) from exc
            self._known_hosts.verify(
                self.host, names, server_key, target.known_hosts, p.host_key_policy
            )
            self._authenticate(t, target, where)
        except BaseException:
            if t is not None:
                t.close()
            else:
                sock.close()
            raise
        return t

    def _socket(self, target: _Target, where: str) -> socket.socket | paramiko.Channel:
        """A TCP socket with TCP_NODELAY, or a direct-tcpip channel through the jump host."""
        p = self.params
        if target.proxy_jump:
            if self._bastion is None:
                hops = [h for h in target.proxy_jump.split(",") if h.strip()]
                try:
                    user, jhost, jport = _parse_jump(hops[-1])
                except ValueError as exc:
                    raise ConnectError(
                        self.host, f"invalid ProxyJump {target.proxy_jump!r}"
                    ) from exc
                jparams = SSHParams(
                    host=f"{self.host}: jump host {jhost}",
                    address=jhost,
                    port=jport,
                    user=user,
                    known_hosts=p.known_hosts,
                    host_key_policy=p.host_key_policy,
                    connect_timeout=p.connect_timeout,
                    proxy_jump=",".join(hops[:-1]) if len(hops) > 1 else "none",
                    ssh_config=p.ssh_config,
                )
                extra = tuple(target.identities) if target.identities_explicit else ()
                self._bastion = _bastions.acquire(jparams, self._known_hosts, extra)
            try:
                return self._bastion.open_tunnel(target.hostname, target.port)
            except (ConnectError, HostKeyError):
                raise  # about the jump host itself; already says so
            except TransportError as exc:
                raise ConnectError(
                    self.host,
                    f"cannot reach {where} through the jump host: {exc}",
                    hint="check the address as the jump host sees it, and that its sshd "
                    "allows TCP forwarding",
                ) from exc
        try:
            sock = socket.create_connection(
                (target.hostname, target.port), timeout=p.connect_timeout
            )
        except socket.gaierror as exc:
            raise ConnectError(
                self.host,
                f"cannot resolve {target.hostname}: {exc.strerror}",
                hint="check the address (or the HostName in your ssh config)",
            ) from exc
        except TimeoutError as exc:
            raise ConnectError(
                self.host,
                f"connection to {where} timed out after {p.connect_timeout:g}s",
                hint=f"is the host up, and does a firewall let port {target.port} through?",
            ) from exc
        except ConnectionRefusedError as exc:
            raise ConnectError(
                self.host,
                f"connection to {where} refused",
                hint="is sshd running on the host, and is the port right?",
            ) from exc
        except OSError as exc:
            raise ConnectError(
                self.host,
                f"cannot connect to {where}: {exc.strerror or exc}",
                hint="check the address and the network path to the host",
            ) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (never with create_connection, but harmless)
        return sock

    def _authenticate(self, t: paramiko.Transport, target: _Target, where: str) -> None:
        """Identity files first (SSHParams, else ssh_config), then ssh-agent, then ~/.ssh/id_*."""
        tried: list[str] = []
        user = target.user

        def attempt(key: paramiko.PKey, label: str) -> bool:
            try:
                t.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                raise ConnectError(
                    self.host,
                    f"{where} does not accept public-key authentication "
                    f"(it offers: {', '.join(exc.allowed_types) or 'nothing'})",
                    hint="hyprov authenticates with keys only; enable PubkeyAuthentication",
                ) from exc
            except paramiko.AuthenticationException:
                tried.append(label)
                return False
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectError(
                    self.host, f"connection to {where} lost during authentication: {_reason(exc)}"
                ) from exc
            if t.is_authenticated():
                return True
            tried.append(f"{label} (partial: the server wants more factors)")
            return False

        for path in target.identities:
            try:
                key = _load_key(path)
            except FileNotFoundError as exc:
                if target.identities_explicit and path == target.identities[0]:
                    raise ConnectError(
                        self.host,
                        f"identity file {path} not found",
                        hint="fix identity_file (or remove it to use ssh-agent)",
                    ) from exc
                continue
            except paramiko.PasswordRequiredException:
                tried.append(f"{path} (encrypted: add it to ssh-agent)")
                continue
            except (paramiko.SSHException, OSError, ValueError) as exc:
                raise ConnectError(
                    self.host, f"cannot read identity file {path}: {_reason(exc)}"
                ) from exc
            if attempt(key, f"{path} ({fingerprint(key)})"):
                return

        agent: paramiko.Agent | None = None
        try:
            try:
                agent = paramiko.Agent()
                agent_keys: tuple[paramiko.PKey, ...] = agent.get_keys()
            except (paramiko.SSHException, OSError):
                agent_keys = ()
            for key in agent_keys:
                if attempt(key, f"ssh-agent key {fingerprint(key)}"):
                    return
        finally:
            if agent is not None:
                agent.close()

        if not target.identities_explicit:
            for name in _DEFAULT_IDENTITIES:
                path = os.path.expanduser(f"~/.ssh/{name}")
                if path in target.identities or not os.path.exists(path):
                    continue
                try:
                    key = _load_key(path)
                except paramiko.PasswordRequiredException:
                    tried.append(f"{path} (encrypted: add it to ssh-agent)")
                    continue
                except (paramiko.SSHException, OSError, ValueError):
                    continue
                if attempt(key, f"{path} ({fingerprint(key)})"):
                    return

        raise ConnectError(
            self.host,
            f"authentication as {user} on {where} failed "
            f"(tried: {', '.join(tried) if tried else 'no keys at all'})",
            hint="check user and identity_file, that ssh-agent holds the key, and that its "
            "public key is in the user's authorized_keys on the host",
        )

    # -- commands ----------------------------------------------------------------------

    def _command(self, script: str, stdin: bytes) -> tuple[str, bytes]:
        """The command line and its stdin: ``sh -s`` reading the script (HYPROV_ROOT=""
        defined first) from stdin, or ``sh -c SCRIPT`` when the caller has stdin of its
        own; wrapped in ``sudo -n`` for become: sudo. See :mod:`hyprov.transports.base`."""
        inner = "HYPROV_ROOT=; export HYPROV_ROOT; " + script
        sudo = "sudo -n " if self.params.become == "sudo" else ""
        if not stdin:
            return sudo + "sh -s", stdin_script(inner)
        command = sudo + "sh -c " + shlex.quote(inner)
        if len(command.encode()) > ARG_LIMIT:
            raise TransportError(self.host, f"a script of {len(command.encode())} bytes is too large to pass "
                                            f"with stdin of its own (at most {ARG_LIMIT} bytes)")
        return command, stdin

    def _open_channel(self) -> tuple[paramiko.Transport, paramiko.Channel]:
        """A session channel, with at most one more attempt (see the retry rule).

        No channel means no process started on the host, so trying again cannot
        run anything twice. Only a connection that is really dead is closed and
        replaced: other threads may have commands in flight on a live one (a
        refused or slow channel open must not kill them).
        """
        last: BaseException | None = None
        for _attempt in range(2):
            t = self._ensure()
            try:
                return t, t.open_session(timeout=self._channel_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                last = exc
                self._drop_if_dead(t)
        raise TransportError(
            self.host,
            f"cannot open an SSH channel: {_reason(last) if last else 'unknown error'}",
            hint="the host may be overloaded (sshd MaxSessions/MaxStartups) or going down",
        ) from last

    @property
    def _channel_timeout(self) -> float:
        # Opening a channel on a live connection is one round trip; only a
        # badly overloaded host needs long, so be more patient than for connect.
        return max(self.params.connect_timeout, 30.0)

    def _drop_if_dead(self, t: paramiko.Transport) -> None:
        if not t.is_active():
            self._drop(t)

    def run(self, script: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run ``script`` on a new channel; see the module docstring for the retry rule."""
        command, data = self._command(script, stdin)
        t, chan = self._open_channel()
        try:
            result = self._exchange(t, chan, command, data, timeout)
        finally:
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                chan.close()  # fails only if the connection is gone, reported above
        if (
            self.params.become == "sudo"
            and result.exit_status != 0
            and _SUDO_PASSWORD.search(result.stderr)
        ):
            user = self._target.user if self._target else "?"
            raise TransportError(
                self.host,
                f"become: sudo failed: sudo asks {user} for a password",
                hint=f"hyprov runs `sudo -n` (never types passwords): give {user} passwordless "
                f"sudo, e.g. `{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/, "
                "or connect as root",
            )
        return result

    def _exchange(
        self,
        t: paramiko.Transport,
        chan: paramiko.Channel,
        command: str,
        stdin: bytes,
        timeout: float | None,
    ) -> CommandResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._drop_if_dead(t)
            raise TransportError(
                self.host,
                f"the connection broke while starting the command: {_reason(exc)}",
                hint="not retried, since the command may have started; run again",
            ) from exc

        writer_error: list[BaseException] = []
        writer: threading.Thread | None = None
        if len(stdin) <= chan.out_window_size:
            # Fits in the peer's window: sending cannot block on the remote
            # process, so no thread is needed.
            _send_all(chan, stdin, writer_error)
        else:
            writer = threading.Thread(
                target=_send_all,
                args=(chan, stdin, writer_error),
                name=f"hyprov-stdin-{self.host}",
                daemon=True,
            )
            writer.start()

        out = bytearray()
        err = bytearray()
        # The channel's pipe is readable when stdout or stderr has data, or at
        # EOF/close. poll(), not select(): hundreds of hosts exceed FD_SETSIZE.
        poller = select.poll()
        poller.register(chan.fileno(), select.POLLIN)
        while True:
            done = bool(chan.eof_received) or chan.closed
            while chan.recv_ready():
                out += chan.recv(_RECV_CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_RECV_CHUNK)
            if done:
                break
            if deadline is None:
                poller.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._timed_out(chan, timeout)
                poller.poll(max(1, int(left * 1000)))

        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not chan.status_event.wait(wait):
            self._timed_out(chan, timeout)
        if writer is not None:
            writer.join(timeout=5)
        status = chan.recv_exit_status()
        if status == -1 and not t.is_active():
            # No exit status and the connection is gone: the command may have run.
            self._drop(t)
            raise TransportError(
                self.host,
                "the connection was lost while the command ran (it may have run partly)",
                hint="not retried, to avoid running it twice; check the host and run again",
            )
        return CommandResult(status, bytes(out), bytes(err))

    def _timed_out(self, chan: paramiko.Channel, timeout: float | None) -> NoReturn:
        chan.close()
        raise TransportError(
            self.host,
            f"command timed out after {timeout:g}s (channel closed)",
            hint="raise the timeout or check what the command waits for",
        )

    def open_tunnel(self, dest_host: str, dest_port: int) -> paramiko.Channel:
        """A direct-tcpip channel to ``dest_host:dest_port`` as seen from the node (e.g. 127.0.0.1)."""
        last: BaseException | None = None
        for _attempt in range(2):
            t = self._ensure()
            try:
                return t.open_channel(
                    "direct-tcpip",
                    (dest_host, dest_port),
                    ("127.0.0.1", 0),
                    timeout=self._channel_timeout,
                )
            except paramiko.ChannelException as exc:
                raise TransportError(
                    self.host,
                    f"cannot open a tunnel to {dest_host}:{dest_port}: {exc.text or exc}",
                    hint="is something listening there, and does sshd allow TCP forwarding?",
                ) from exc
            except (paramiko.SSHException, EOFError, OSError) as exc:
                last = exc
                self._drop_if_dead(t)
        raise TransportError(
            self.host,
            f"cannot open a tunnel to {dest_host}:{dest_port}: "
            f"{_reason(last) if last else 'unknown error'}",
        ) from last

    def close(self) -> None:
        """Close the connection (and release the shared jump-host connection)."""
        with self._lock:
            t, self._transport = self._transport, None
            bastion, self._bastion = self._bastion, None
        if t is not None:
            t.close()
        if bastion is not None:
            _bastions.release(bastion)

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send_all(chan: paramiko.Channel, data: bytes, errors: list[BaseException]) -> None:
    """Send ``data`` then EOF; a remote that stops reading early is not an error here."""
    try:
        offset = 0
        while offset < len(data):
            n = _send_locked(chan, data[offset : offset + _SEND_CHUNK])
            if n <= 0:
                break  # the channel closed: the remote exited without reading it all
            offset += n
        _send_locked(chan, None)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        errors.append(exc)


def _send_locked(chan: paramiko.Channel, data: bytes | None) -> int:
    """Send DATA (EOF when ``data`` is None) while holding the channel lock; bytes sent.

    Why not ``chan.send``/``chan.shutdown_write``: paramiko builds those messages
    under ``chan.lock`` but sends them after releasing it, and its transport
    thread may answer the server's CLOSE with our CLOSE in between. OpenSSH then
    receives DATA/EOF for a channel it has freed and drops the *whole
    connection* ("ieof packet referred to nonexistent channel"), killing every
    command in flight on it. Seen here with 8 threads sharing one connection.
    Holding the lock across the send orders our message before that CLOSE.
    (During a rekey the send may wait for it with the lock held; paramiko bounds
    that wait at 30 s. Rekeys happen after ~512 MB, far beyond hyprov's use.)
    """
    c: Any = chan
    transport: Any = c.transport
    if transport is None:
        return 0
    while True:
        with c.lock:
            if c.closed or c.eof_sent:
                return 0
            if not transport.clear_to_send.is_set():
                pass  # key exchange under way: wait for it without the lock
            elif data is None:
                message = c._send_eof()
                if message is not None:
                    transport._send_user_message(message)
                return 0
            else:
                size = c._wait_for_send_window(len(data))  # may wait, releasing the lock
                if size == 0:
                    return 0
                message = Message()
                message.add_byte(cMSG_CHANNEL_DATA)
                message.add_int(c.remote_chanid)
                message.add_string(data[:size])
                transport._send_user_message(message)
                return int(size)
        if not transport.is_active():
            return 0
        transport.clear_to_send.wait(0.1)


def _reason(exc: BaseException) -> str:
    """A one-line reason for a foreign exception."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
