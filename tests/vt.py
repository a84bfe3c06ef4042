"""Run a command on a pseudo-terminal and replay what it wrote on a tiny screen model.

Understands what a line-oriented program writes: text, CR, LF, BS, and the CSI
sequences for cursor up/down/column (A, B, F, G), erase line (K) and erase
below (J); colours (m) are dropped. Enough to assert on the final screen of
hyprov's live display without a terminal emulator dependency.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping
from pathlib import Path

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def run_on_pty(argv: list[str], *, cwd: Path, env: Mapping[str, str], rows: int = 40, cols: int = 120,
               timeout: float = 120, interrupt_after: str | None = None) -> tuple[int, str]:
    """Exit status and everything the command wrote to its terminal (stdout and stderr).
    ``interrupt_after``: once the output holds this text, Ctrl-C (SIGINT, as the terminal
    sends it; SIGINT is not ignored in the command, as from a terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if interrupt_after is not None and interrupt_after.encode() in b"".join(chunks):
                interrupt_after = None
                proc.send_signal(signal.SIGINT)
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise TimeoutError(f"{argv} did not finish in {timeout}s")
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the slave side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def screen(output: str, cols: int = 120) -> list[str]:
    """The lines on the screen after ``output`` (scrollback included), trailing blanks dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(output):
        ch = output[i]
        if ch == "\x1b":
            m = _CSI.match(output, i)
            if m:
                args, cmd = m.group(1), m.group(2)
                n = int(args) if args.isdigit() else None
                if cmd in "AF":
                    row = max(0, row - (n or 1))
                    if cmd == "F":
                        col = 0
                elif cmd == "B":
                    row += n or 1
                elif cmd == "G":
                    col = (n or 1) - 1
                elif cmd == "K":
                    while len(lines) <= row:
                        lines.append([])
                    if (n or 0) == 2:
                        lines[row] = []
                    else:
                        del lines[row][col:]
                elif cmd == "J":
                    while len(lines) <= row:
                        lines.append([])
                    del lines[row][col:]
                    del lines[row + 1:]
                i = m.end()
                continue
            i += 1
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0  # the tty turns LF into CRLF (onlcr)
        elif ch == "\b":
            col = max(0, col - 1)
        else:
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            if col >= cols:
                row, col = row + 1, 0
                while len(lines) <= row:
                    lines.append([])
                line = lines[row]
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    text = ["".join(line).rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    return text
