"""Transports against real sshd hosts (tests/sshhosts.py) and the local directory transport."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest
import sshhosts
from sshhosts import SSHHost, SSHHosts

from hyprov.errors import ConnectError, HostKeyError, TransportError
from hyprov.transports.base import CommandResult
from hyprov.transports.knownhosts import KnownHosts, fingerprint
from hyprov.transports.local import LocalTransport
from hyprov.transports.ssh import SSHTransport
from hyprov.transports.sshconfig import SSHParams

# The fixtures live in tests/sshhosts.py (shared with bench/); bind them here.
ssh_hosts = sshhosts.ssh_hosts
ssh_hosts_factory = sshhosts.ssh_hosts_factory

Factory = Callable[..., SSHHosts]
BIG = 8 * 1024 * 1024  # several MB: far beyond paramiko's 2 MiB channel window


@pytest.fixture
def no_agent_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ssh-agent and an empty HOME: only the keys a test names can authenticate."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def transport(hosts: SSHHosts, host: SSHHost, kh: KnownHosts | None = None,
              **overrides: object) -> SSHTransport:
    return SSHTransport(SSHParams(**hosts.params(host, **overrides)), kh or KnownHosts())


@pytest.fixture
def t1(ssh_hosts: SSHHosts) -> Iterator[SSHTransport]:
    t = transport(ssh_hosts, ssh_hosts[0])
    yield t
    t.close()


Run = Callable[..., CommandResult]
SCRIPT_BIG = 300 * 1024  # a script beyond Linux's limit on one argument (MAX_ARG_STRLEN, 128 KiB)


def check_script_size_and_stdin(run: Run) -> None:
    """A script far beyond one argument runs whole; a command in it that reads stdin gets
    an empty one (never the rest of the script); HYPROV_ROOT is set as for any script."""
    for size in (10, SCRIPT_BIG):
        script = f"v='{'x' * size}'\nprintf %s \"$v\" | wc -c\ncat\necho \"end:${{HYPROV_ROOT+set}}\"\n"
        r = run(script)
        assert (r.exit_status, r.stdout, r.stderr) == (0, f"{size}\nend:set\n".encode(), b""), (r.exit_status, r.stderr)
    r = run("exit 3\n# " + "y" * SCRIPT_BIG)
    assert r.exit_status == 3
    with pytest.raises(TransportError, match="too large to pass with stdin"):
        run("# " + "z" * SCRIPT_BIG, stdin=b"data")


def check_script_not_in_any_command_line(run: Run) -> None:
    """The script (file contents: keys, the database password) is in no process's command
    line on the host: ``ps`` shows it to every user, and sudo logs its command line."""
    marker = "hyprov-secret-" + os.urandom(6).hex()
    r = run(f": {marker}\ncat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '\n")
    assert r.exit_status == 0 and b"/proc/" in r.stdout, r  # cat's own command line at least
    assert marker.encode() not in r.stdout


# --------------------------------------------------------------------------- local


def test_local_script_of_any_size_travels_on_stdin(tmp_path: Path) -> None:
    t = LocalTransport("n1", tmp_path / "n1")
    check_script_size_and_stdin(t.run)
    check_script_not_in_any_command_line(t.run)


def test_local_run_results_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPROV_TEST_PARENT", "inherited")
    old = os.umask(0o077)  # the root must be 0755 whatever the umask
    try:
        t = LocalTransport("n1", tmp_path / "root" / "n1")
        r = t.run('echo "$HYPROV_ROOT|$(pwd)|$HYPROV_TEST_PARENT"; echo oops >&2; exit 7')
    finally:
        os.umask(old)
    root = (tmp_path / "root" / "n1").absolute()
    assert r.exit_status == 7
    assert r.stdout == f"{root}|{root}|inherited\n".encode()
    assert r.stderr == b"oops\n"
    assert (root.stat().st_mode & 0o777) == 0o755


def test_local_relative_root_is_made_absolute(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = LocalTransport("n1", Path("rel/n1"))
    r = t.run('mkdir -p "$HYPROV_ROOT/etc/kong" && cd / && echo "$HYPROV_ROOT"')
    assert r.stdout.decode().strip() == str(tmp_path / "rel" / "n1")
    assert (tmp_path / "rel" / "n1" / "etc" / "kong").is_dir()


def test_local_large_io_without_deadlock(tmp_path: Path) -> None:
    data = os.urandom(BIG)
    t = LocalTransport("n1", tmp_path / "n1")
    r = t.run("head -c 3000000 /dev/zero >&2; cat", stdin=data, timeout=60)
    assert r.exit_status == 0
    assert r.stdout == data
    assert len(r.stderr) == 3_000_000


def test_local_timeout_kills_background_children(tmp_path: Path) -> None:
    t = LocalTransport("n1", tmp_path / "n1")
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        t.run("sleep 30 & sleep 30", timeout=0.3)
    assert time.monotonic() - start < 15  # the children sleep 30 s: they were killed


# --------------------------------------------------------------------------- basics


def test_run_returns_stdout_stderr_and_exit_status(t1: SSHTransport) -> None:
    r = t1.run("echo out; echo err >&2; exit 3")
    assert (r.exit_status, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert t1.run("true").exit_status == 0


def test_hyprov_root_is_set_empty_and_exported(t1: SSHTransport) -> None:
    r = t1.run('echo "${HYPROV_ROOT+set}[$HYPROV_ROOT]"; sh -c \'echo "${HYPROV_ROOT+child}"\'')
    assert r.stdout == b"set[]\nchild\n"


def test_script_quoting_survives_the_login_shell(t1: SSHTransport) -> None:
    script = "printf '%s|' \"it's\" '$HOME' 'a\\b' '`x`' \"\\$(id)\" '; rm -rf /nonexistent'"
    local = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert t1.run(script).stdout == local == b"it's|$HOME|a\\b|`x`|$(id)|; rm -rf /nonexistent|"


def test_large_stdin_stdout_stderr_without_deadlock(t1: SSHTransport) -> None:
    data = os.urandom(BIG)
    # stderr fills before stdin is read, and stdout is as big as stdin: any
    # sequential read/write strategy deadlocks on the 2 MiB channel windows.
    r = t1.run("head -c 3000000 /dev/zero >&2; cat", stdin=data, timeout=120)
    assert r.exit_status == 0
    assert len(r.stdout) == BIG and r.stdout == data
    assert r.stderr == b"\0" * 3_000_000


def test_script_of_any_size_travels_on_stdin(t1: SSHTransport) -> None:
    check_script_size_and_stdin(t1.run)
    check_script_not_in_any_command_line(t1.run)


def test_small_stdin_and_early_exit(t1: SSHTransport) -> None:
    assert t1.run("wc -c", stdin=b"12345").stdout.strip() == b"5"
    # The remote exits without reading a large stdin: a result, not an error or hang.
    r = t1.run("exit 4", stdin=os.urandom(BIG), timeout=60)
    assert r.exit_status == 4


def test_connection_reused_for_every_run(ssh_hosts: SSHHosts) -> None:
    host = ssh_hosts[1]
    before = host.accepted_logins()
    t = transport(ssh_hosts, host)
    try:
        for i in range(20):
            assert t.run(f"echo {i}").stdout == f"{i}\n".encode()
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: t.run(f"echo {i}").stdout, range(40)))
        assert outs == [f"{i}\n".encode() for i in range(40)]
        assert t.connections_opened == 1
    finally:
        t.close()
    assert host.accepted_logins() - before == 1  # the sshd side saw one login


def test_concurrent_runs_with_stdin_share_one_connection(ssh_hosts: SSHHosts) -> None:
    """Regression: paramiko could send EOF/DATA after its automatic CLOSE reply,
    and sshd then drops the whole connection under every thread using it."""
    t = transport(ssh_hosts, ssh_hosts[1])
    payload = os.urandom(100_000)

    def job(i: int) -> bool:
        if i % 3 == 0:
            r = t.run("exit 3", stdin=payload)  # exits without reading its stdin
            return r.exit_status == 3
        if i % 3 == 1:
            return t.run("cat", stdin=payload).stdout == payload
        return t.run(f"echo {i}").stdout == f"{i}\n".encode()

    try:
        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(job, range(300)))
        assert t.connections_opened == 1
    finally:
        t.close()


def test_many_transports_in_parallel(ssh_hosts: SSHHosts) -> None:
    kh = KnownHosts()
    ts = [transport(ssh_hosts, h, kh) for h in ssh_hosts for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(ts)) as pool:
            outs = list(pool.map(lambda t: t.run("cat", stdin=t.host.encode()).stdout, ts))
        assert outs == [t.host.encode() for t in ts]
        assert all(t.connections_opened == 1 for t in ts)
    finally:
        for t in ts:
            t.close()


def test_tcp_nodelay_is_set(t1: SSHTransport) -> None:
    t1.connect()
    conn = t1.connection
    assert conn is not None
    sock = conn.sock
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_run_timeout_closes_channel_and_keeps_connection(t1: SSHTransport) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        t1.run("sleep 20", timeout=0.5)
    assert time.monotonic() - start < 10  # the command sleeps 20 s
    assert t1.run("echo again").stdout == b"again\n"
    assert t1.connections_opened == 1


def test_open_tunnel_reaches_a_port_on_the_host(ssh_hosts: SSHHosts, t1: SSHTransport) -> None:
    host = ssh_hosts[0]
    chan = t1.open_tunnel(host.address, host.port)
    try:
        chan.settimeout(5)
        assert chan.recv(100).startswith(b"SSH-2.0-OpenSSH")
    finally:
        chan.close()
    with pytest.raises(TransportError, match=r"tunnel to 127\.0\.0\.1:1\b"):
        t1.open_tunnel("127.0.0.1", 1)


# --------------------------------------------------------------------------- host keys


def _ssh_keygen_fingerprint(pub_line: str, tmp_path: Path) -> str:
    """The fingerprint as OpenSSH itself prints it (an independent oracle)."""
    f = tmp_path / "k.pub"
    f.write_text(pub_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(f)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_strict_refuses_unknown_key_with_fingerprint(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    host = ssh_hosts[0]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = transport(ssh_hosts, host, known_hosts=str(empty))
    with pytest.raises(HostKeyError) as info:
        t.run("true")
    msg = str(info.value)
    expected = _ssh_keygen_fingerprint(host.host_pub, tmp_path)
    assert expected.startswith("SHA256:") and not expected.endswith("=")
    assert expected in msg
    assert msg.startswith(f"{host.name}: unknown host key for {host.address}")
    assert info.value.hint and "accept-new" in info.value.hint
    assert empty.read_text() == ""  # nothing recorded
    assert t.connection is None


def test_fingerprint_matches_openssh(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    host = ssh_hosts[0]
    key = paramiko.PKey.from_type_string(*_split_pub(host.host_pub))
    assert fingerprint(key) == _ssh_keygen_fingerprint(host.host_pub, tmp_path) == key.fingerprint


def _split_pub(line: str) -> tuple[str, bytes]:
    import base64

    kind, b64 = line.split()[:2]
    return kind, base64.b64decode(b64)


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_changed_key_refused_in_both_policies(ssh_hosts_factory: Factory, policy: str) -> None:
    hosts = ssh_hosts_factory(1)
    host = hosts[0]
    old_fp = host.fingerprint
    before = hosts.known_hosts.read_text()
    new_pub = hosts.replace_host_key(host)
    t = transport(hosts, host, host_key_policy=policy)
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        t.connect()
    assert sshhosts.pub_fingerprint(new_pub) in str(info.value)
    assert old_fp in str(info.value)
    assert info.value.hint and "ssh-keygen -R" in info.value.hint
    assert hosts.known_hosts.read_text() == before


def test_accept_new_records_unknown_keys_once(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    kh_file = tmp_path / "sub" / "known_hosts"  # the directory does not exist yet
    kh = KnownHosts()
    ts = [transport(ssh_hosts, h, kh, known_hosts=str(kh_file), host_key_policy="accept-new")
          for h in ssh_hosts for _ in range(2)]
    try:
        with ThreadPoolExecutor(len(ts)) as pool:
            assert all(r.exit_status == 0 for r in pool.map(lambda t: t.run("true"), ts))
    finally:
        for t in ts:
            t.close()
    lines = kh_file.read_text().splitlines()
    assert sorted(lines) == sorted(f"{h.known_hosts_name} {h.host_pub}" for h in ssh_hosts)
    # A new run (fresh KnownHosts) with strict checking now trusts them.
    t = transport(ssh_hosts, ssh_hosts[2], KnownHosts(), known_hosts=str(kh_file))
    try:
        assert t.run("echo ok").stdout == b"ok\n"
    finally:
        t.close()


def test_hashed_known_hosts_entries(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    hashed = tmp_path / "known_hosts"
    shutil.copy(ssh_hosts.known_hosts, hashed)
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], capture_output=True, check=True)
    text = hashed.read_text()
    assert "|1|" in text and ssh_hosts[0].address not in text
    t = transport(ssh_hosts, ssh_hosts[0], known_hosts=str(hashed))
    try:
        assert t.run("echo ok").stdout == b"ok\n"
    finally:
        t.close()


def test_revoked_key_refused(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    host = ssh_hosts[0]
    kh.write_text(ssh_hosts.known_hosts.read_text() + f"@revoked * {host.host_pub}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        transport(ssh_hosts, host, known_hosts=str(kh)).connect()


# --------------------------------------------------------------------------- errors


def test_unreachable_host_fails_fast(ssh_hosts_factory: Factory) -> None:
    hosts = ssh_hosts_factory(1)
    host = hosts[0]
    hosts.stop(host)
    t = transport(hosts, host)
    start = time.monotonic()
    with pytest.raises(ConnectError, match="refused") as info:
        t.run("true")
    assert time.monotonic() - start < 10  # refused, not a connect timeout
    assert info.value.hint and "sshd" in info.value.hint
    hosts.start(host)  # and it recovers once the host is back
    assert t.run("echo back").stdout == b"back\n"
    t.close()


def test_connect_timeout_when_server_never_speaks(capfd: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)  # TCP connects (backlog) but no SSH banner ever comes
        port = srv.getsockname()[1]
        t = SSHTransport(SSHParams(host="mute", address="127.0.0.1", port=port, user="root",
                                   ssh_config=None, connect_timeout=0.5), KnownHosts())
        start = time.monotonic()
        with pytest.raises(ConnectError, match=r"SSH handshake with 127\.0\.0\.1"):
            t.connect()
        assert time.monotonic() - start < 10
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err  # paramiko's thread must stay quiet


def test_unresolvable_address(ssh_hosts: SSHHosts) -> None:
    t = transport(ssh_hosts, ssh_hosts[0], address="no-such-host.invalid")
    with pytest.raises(ConnectError, match=r"cannot resolve no-such-host\.invalid"):
        t.connect()


def test_auth_failure_is_a_connect_error(ssh_hosts: SSHHosts, tmp_path: Path,
                                         no_agent_home: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    t = transport(ssh_hosts, ssh_hosts[0], identity_file=str(other))
    with pytest.raises(ConnectError, match=r"authentication as root on .* failed") as info:
        t.connect()
    assert str(other) in str(info.value)
    assert info.value.hint and "authorized_keys" in info.value.hint
    missing = transport(ssh_hosts, ssh_hosts[0], identity_file=str(tmp_path / "nope"))
    with pytest.raises(ConnectError, match=r"identity file .* not found"):
        missing.connect()


@contextlib.contextmanager
def agent_holding(key: Path, tmp_path: Path) -> Iterator[Path]:
    """A private ssh-agent holding ``key``: its socket (not put in the environment)."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.01)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait()


def test_ssh_agent_is_used_without_identity_file(ssh_hosts: SSHHosts, tmp_path: Path,
                                                 no_agent_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with agent_holding(ssh_hosts.client_key, tmp_path) as sock:
        t = transport(ssh_hosts, ssh_hosts[0], identity_file=None)
        with pytest.raises(ConnectError, match="no keys at all"):
            t.connect()  # no agent in the environment yet: nothing to offer
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert t.run("echo agent").stdout == b"agent\n"
        t.close()


def test_an_encrypted_identity_file_is_skipped_for_the_agent(ssh_hosts: SSHHosts, tmp_path: Path,
                                                              no_agent_home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenSSH-format key with a passphrase (paramiko lets cryptography's TypeError out):
    skipped and named as encrypted, and the agent, which holds it, is used, as ssh does."""
    enc = tmp_path / "enc_key"
    enc.write_bytes(ssh_hosts.client_key.read_bytes())
    enc.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "s3cret-pass", "-f", str(enc)], check=True, capture_output=True)
    t = transport(ssh_hosts, ssh_hosts[0], identity_file=str(enc))
    with pytest.raises(ConnectError, match=r"enc_key \(encrypted: add it to ssh-agent\)"):
        t.connect()
    with agent_holding(ssh_hosts.client_key, tmp_path) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        t = transport(ssh_hosts, ssh_hosts[0], identity_file=str(enc))
        assert t.run("echo agent").stdout == b"agent\n"
        t.close()


def _drop(hosts: SSHHosts, host: SSHHost) -> None:
    assert hosts.drop_connections(host) >= 1


def test_dropped_connection_is_reestablished_once(ssh_hosts_factory: Factory) -> None:
    hosts = ssh_hosts_factory(1)
    host = hosts[0]
    t = transport(hosts, host)
    assert t.run("true").exit_status == 0
    _drop(hosts, host)
    assert t.run("echo again").stdout == b"again\n"
    assert t.connections_opened == 2
    assert host.accepted_logins() == 2
    t.close()


def test_connection_dropped_while_opening_channel_is_retried_once(
    t1: SSHTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t1.connect()
    first = t1.connection
    assert first is not None
    calls: list[paramiko.Transport] = []
    real = paramiko.Transport.open_session

    def dropped(self: paramiko.Transport, *a: Any, **kw: Any) -> paramiko.Channel:
        calls.append(self)
        if self is first:  # the connection dies just as we ask for a channel
            self.close()
            raise EOFError()
        return real(self, *a, **kw)

    monkeypatch.setattr(paramiko.Transport, "open_session", dropped)
    assert t1.run("echo retried").stdout == b"retried\n"
    assert len(calls) == 2 and calls[0] is first and calls[1] is not first
    assert t1.connections_opened == 2

    def always_dropped(self: paramiko.Transport, *a: Any, **kw: Any) -> paramiko.Channel:
        self.close()
        raise EOFError()

    monkeypatch.setattr(paramiko.Transport, "open_session", always_dropped)
    with pytest.raises(TransportError, match="cannot open an SSH channel"):
        t1.run("true")
    assert t1.connections_opened == 3  # one reconnection for this run, not a loop


def test_refused_channel_does_not_kill_commands_in_flight(
    t1: SSHTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    results: list[bytes] = []
    slow = threading.Thread(target=lambda: results.append(t1.run("sleep 1; echo alive").stdout))
    slow.start()
    time.sleep(0.3)  # the slow command is running on the shared connection
    conn = t1.connection
    refusals: list[int] = []

    def refused(self: paramiko.Transport, *a: Any, **kw: Any) -> paramiko.Channel:
        refusals.append(1)
        raise paramiko.ChannelException(4, "Resource shortage")

    monkeypatch.setattr(paramiko.Transport, "open_session", refused)
    with pytest.raises(TransportError, match="Resource shortage"):
        t1.run("true")
    slow.join(10)
    assert results == [b"alive\n"]  # the other thread's command finished normally
    assert len(refusals) == 2 and t1.connection is conn and t1.connections_opened == 1


def test_no_retry_once_the_command_started(ssh_hosts_factory: Factory, tmp_path: Path) -> None:
    hosts = ssh_hosts_factory(1)
    host = hosts[0]
    mark = tmp_path / "ran"
    t = transport(hosts, host)
    errors: list[BaseException] = []

    def victim() -> None:
        try:
            t.run(f"echo x >> {mark}; sleep 30", timeout=60)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    th = threading.Thread(target=victim)
    th.start()
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _drop(hosts, host)
    th.join(10)
    assert not th.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportError)
    assert "lost while the command ran" in str(errors[0])
    assert mark.read_text() == "x\n"  # ran once, not re-run
    assert t.run("echo next").stdout == b"next\n"  # the next run reconnects
    t.close()


# --------------------------------------------------------------------------- become


@pytest.fixture(scope="module")
def users(ssh_hosts: SSHHosts) -> SSHHost:
    """h3 gets a ``deploy`` user with passwordless sudo and a ``kong`` user without sudo."""
    host = ssh_hosts[2]
    if ssh_hosts.nsenter_run(host, ["getent", "passwd", "deploy"], check=False).returncode:
        ssh_hosts.add_deploy_user(host)
        ssh_hosts.add_kong_user(host)
    return host


def test_become_sudo_with_nopasswd(ssh_hosts: SSHHosts, users: SSHHost) -> None:
    plain = transport(ssh_hosts, users, user="deploy")
    sudo = transport(ssh_hosts, users, user="deploy", become="sudo")
    try:
        assert plain.run("id -un").stdout == b"deploy\n"
        r = sudo.run('id -un; echo "${HYPROV_ROOT+set}[$HYPROV_ROOT]"; cat', stdin=b"in\n")
        assert (r.exit_status, r.stdout) == (0, b"root\nset[]\nin\n")
        assert sudo.run("exit 5").exit_status == 5  # plain failures are still returned
        check_script_size_and_stdin(sudo.run)
        check_script_not_in_any_command_line(sudo.run)
        assert sudo.run("id -un\n# " + "x" * SCRIPT_BIG).stdout == b"root\n"
    finally:
        plain.close()
        sudo.close()


def test_become_sudo_without_rights_is_a_clear_error(ssh_hosts: SSHHosts, users: SSHHost) -> None:
    t = transport(ssh_hosts, users, user="kong", become="sudo")
    try:
        with pytest.raises(TransportError, match="sudo asks kong for a password") as info:
            t.run("id -u")
        assert info.value.hint and "NOPASSWD" in info.value.hint
        assert "Traceback" not in str(info.value)
    finally:
        t.close()


# --------------------------------------------------------------------------- ssh_config


def test_ssh_config_fills_hostname_user_port_identity(ssh_hosts_factory: Factory,
                                                      tmp_path: Path,
                                                      no_agent_home: Path) -> None:
    hosts = ssh_hosts_factory(1, port=2200)
    host = hosts[0]
    hosts.add_deploy_user(host)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host web1\n  HostName {host.address}\n  User deploy\n  Port 2200\n"
        f"  IdentityFile {hosts.client_key}\n"
        "Host *\n  User nobody-by-default\n"
    )
    params = SSHParams(host="web1", address="web1", known_hosts=str(hosts.known_hosts),
                       ssh_config=str(cfg), connect_timeout=5)
    t = SSHTransport(params, KnownHosts())
    try:
        assert t.run("id -un").stdout == b"deploy\n"
        conn = t.connection
        assert conn is not None and conn.getpeername() == (host.address, 2200)
    finally:
        t.close()
    # What SSHParams sets wins over ssh_config.
    root = SSHTransport(SSHParams(host="web1", address="web1", user="root",
                                  known_hosts=str(hosts.known_hosts), ssh_config=str(cfg)),
                        KnownHosts())
    assert root.run("id -un").stdout == b"root\n"
    root.close()
    wrong_port = SSHTransport(SSHParams(host="web1", address="web1", port=22,
                                        known_hosts=str(hosts.known_hosts),
                                        ssh_config=str(cfg)), KnownHosts())
    with pytest.raises(ConnectError, match=f"{re.escape(host.address)}:22 refused"):
        wrong_port.connect()


def test_invoke_is_loaded_only_for_match_exec(tmp_path: Path) -> None:
    """paramiko imports invoke (~0.1 s) only for ssh_config's "Match exec": hyprov holds
    it back at import and loads it when a config file needs it."""
    plain, with_exec = tmp_path / "plain", tmp_path / "exec"
    plain.write_text("Host web1\n  HostName 192.0.2.1\n")
    with_exec.write_text('Match exec "test -n x"\n  HostName 192.0.2.7\n  Port 2222\n')
    code = (
        "import sys\n"
        "import hyprov.transports.sshconfig as s\n"
        "assert 'invoke' not in sys.modules\n"
        "assert s._load_ssh_config('h', sys.argv[1]).lookup('web1')['hostname'] == '192.0.2.1'\n"
        "assert 'invoke' not in sys.modules\n"
        "opts = s._load_ssh_config('h', sys.argv[2]).lookup('web1')\n"
        "print(opts['hostname'], opts['port'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(plain), str(with_exec)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["192.0.2.7", "2222"]


def test_proxy_jump_through_a_bastion(ssh_hosts_factory: Factory, tmp_path: Path) -> None:
    hosts = ssh_hosts_factory(3)
    bastion, target, target2 = hosts
    # Only the bastion can resolve these names: success proves the tunnel.
    hosts.nsenter_run(bastion, ["sh", "-c", f"echo '{target.address} hyt-target' >> /etc/hosts;"
                                            f"echo '{target2.address} hyt-target2' >> /etc/hosts"])
    kh = tmp_path / "known_hosts"
    kh.write_text(hosts.known_hosts.read_text() + f"hyt-target {target.host_pub}\n"
                  f"hyt-target2 {target2.host_pub}\n")
    direct = transport(hosts, target, address="hyt-target", known_hosts=str(kh))
    with pytest.raises(ConnectError, match="cannot resolve hyt-target"):
        direct.connect()
    known = KnownHosts()
    jump = f"root@{bastion.address}:{bastion.port}"
    t = transport(hosts, target, known, address="hyt-target", known_hosts=str(kh),
                  proxy_jump=jump)
    t2 = transport(hosts, target2, known, address="hyt-target2", known_hosts=str(kh),
                   proxy_jump=jump)
    before = bastion.accepted_logins()
    try:
        mounts = t.run("cat /proc/self/mountinfo").stdout.decode()
        assert str(target.etc_upper) in mounts  # we are on the target, not the bastion
        assert str(target2.etc_upper) in t2.run("cat /proc/self/mountinfo").stdout.decode()
        assert t.run("cat", stdin=b"x" * BIG, timeout=120).stdout == b"x" * BIG
    finally:
        t.close()
        t2.close()
    assert bastion.accepted_logins() - before == 1  # one shared bastion connection
    hosts.stop(target2)
    t3 = transport(hosts, target2, known, address="hyt-target2", known_hosts=str(kh),
                   proxy_jump=jump)
    with pytest.raises(ConnectError, match=r"cannot reach hyt-target2:22 through the jump host"):
        t3.connect()
    t3.close()


def test_proxy_jump_from_ssh_config(ssh_hosts_factory: Factory, tmp_path: Path,
                                    no_agent_home: Path) -> None:
    hosts = ssh_hosts_factory(2)
    bastion, target = hosts
    hosts.nsenter_run(bastion, ["sh", "-c", f"echo '{target.address} hyt-inner' >> /etc/hosts"])
    kh = tmp_path / "known_hosts"
    kh.write_text(hosts.known_hosts.read_text() + f"hyt-inner {target.host_pub}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host bastion\n  HostName {bastion.address}\n  User root\n"
        f"  IdentityFile {hosts.client_key}\n"
        "Host inner\n  HostName hyt-inner\n  User root\n  ProxyJump bastion\n"
        f"  IdentityFile {hosts.client_key}\n"
    )
    before = bastion.accepted_logins()
    t = SSHTransport(SSHParams(host="inner", address="inner", known_hosts=str(kh),
                               ssh_config=str(cfg)), KnownHosts())
    try:
        assert str(target.etc_upper) in t.run("cat /proc/self/mountinfo").stdout.decode()
    finally:
        t.close()
    assert bastion.accepted_logins() - before == 1
    # proxy_jump="none" in SSHParams overrides ssh_config's ProxyJump: no bastion, no name.
    direct = SSHTransport(SSHParams(host="inner", address="inner", known_hosts=str(kh),
                                    ssh_config=str(cfg), proxy_jump="none"), KnownHosts())
    with pytest.raises(ConnectError, match="cannot resolve hyt-inner"):
        direct.connect()


# --------------------------------------------------------------------------- the hosts themselves


def test_etc_written_over_ssh_lands_in_the_overlay(ssh_hosts_factory: Factory) -> None:
    hosts = ssh_hosts_factory(2)
    h1, h2 = hosts
    t = transport(hosts, h1)
    try:
        assert t.run("test -e /etc/kong").exit_status == 1  # a fresh host has no /etc/kong
        assert t.run("mkdir /etc/kong && echo conf > /etc/kong/kong.conf").exit_status == 0
    finally:
        t.close()
    assert (h1.etc_upper / "kong" / "kong.conf").read_text() == "conf\n"
    assert not Path("/etc/kong/kong.conf").exists()  # the machine's /etc is untouched
    assert not (h2.etc_upper / "kong").exists()
    assert hosts.nsenter_run(h1, ["cat", "/etc/kong/kong.conf"]).stdout == b"conf\n"
    hosts.stop(h1)  # /etc survives an sshd restart, like a real machine
    assert hosts.nsenter_run(h1, ["cat", "/etc/kong/kong.conf"]).stdout == b"conf\n"
    hosts.start(h1)
    t = transport(hosts, h1)
    assert t.run("cat /etc/kong/kong.conf").stdout == b"conf\n"
    t.close()


def test_netns_mode_hosts_reachable_from_the_controller_only(ssh_hosts_factory: Factory) -> None:
    hosts = ssh_hosts_factory(2, mode="netns", quickack=True)
    h1, h2 = hosts
    assert h1.address == "10.213.0.11" and h1.netns is not None
    route = subprocess.run(["ip", "route", "show", "10.213.0.0/24"], capture_output=True,
                           text=True, check=True).stdout
    assert route.startswith("unreachable")  # so the next line cannot leave the machine
    outside = transport(hosts, h1, connect_timeout=2)
    with pytest.raises(ConnectError, match="No route to host"):
        outside.connect()  # root namespace: the safety route says unreachable
    t = transport(hosts, h1)
    with hosts.in_ctl_netns():
        t.connect()
    try:
        r = t.run("ip -o -4 addr show dev eth0; ip route show 10.213.0.0/24")
        assert b"10.213.0.11/24" in r.stdout and b"quickack 1" in r.stdout
        # hosts see each other over the bridge
        hop = t.run(f"ssh -i {hosts.client_key} -o BatchMode=yes "
                    f"-o UserKnownHostsFile={hosts.known_hosts} root@{h2.address} echo h2-ok")
        assert (hop.exit_status, hop.stdout) == (0, b"h2-ok\n"), hop.stderr
    finally:
        t.close()
    out = hosts.run_in_ctl(["ssh", "-F", str(hosts.ssh_config), "h2", "echo", "via-ctl"])
    assert out.stdout == b"via-ctl\n"


def test_fixtures_fail_not_skip_without_root_or_sshd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="need root"):
        sshhosts._checked_up(1)
    monkeypatch.undo()
    monkeypatch.setattr(sshhosts, "SSHD", "/nonexistent/sshd")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y openssh-server"):
        sshhosts._checked_up(1)


@pytest.mark.parametrize("mode", ["loopback", "netns"])
def test_hosts_of_a_crashed_run_are_reclaimed(mode: str, tmp_path: Path) -> None:
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import sshhosts\n"
        "h = sshhosts.up(2, mode=sys.argv[2])\n"
        "print(h.dir, h.instance, h[0].pid, h[1].netns, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), mode],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    d, instance, pid, netns = proc.stdout.split()
    assert Path(d).is_dir() and Path(f"/proc/{pid}").exists()
    assert int(instance) in sshhosts.clean()
    assert not Path(d).exists()
    assert not Path(f"/proc/{pid}").exists() or sshhosts._proc_start(int(pid)) is None
    assert all(str(d) not in m for m in sshhosts._mountpoints())
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert netns == "None" or netns not in listed.split()
