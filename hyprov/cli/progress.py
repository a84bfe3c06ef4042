"""What apply/destroy show while they run, fed by the applier's events.

* ``--json``: one JSON object per event and line (for machines): ``node``, ``event``
  (the text) and ``kind`` (:func:`event_kind`); apply/destroy ends with a ``summary``;
* stdout not a terminal, or ``TERM=dumb``: one plain line per event
  (``dp3: file /etc/kong/kong.conf updated (2.1 KiB)``);
* a terminal: a live display, one line per host with its current step or last
  result, redrawn in place with ANSI cursor movement at most ``MAX_FPS`` times a
  second; messages that are not about one host (``ca.root created``) scroll above
  it. ``NO_COLOR`` (set and not empty) or ``--no-color`` turns colour off, nothing else.

Every mode is a :class:`Display`: ``event(node, message)`` is the applier's
``emit``, ``step(node, text)`` its progress hook (what a host is doing now; only
the live display shows it), ``finish(outcomes)`` the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TextIO

MAX_FPS = 10
_CSI = "\x1b["
_COLORS = {"done": "32", "failed": "31", "running": "33", "interrupted": "33", "waiting": "2", "not started": "2",
           "skipped": "2"}
_FAILED = "failed"
_INTERRUPTED = "interrupted"


class Display(Protocol):
    def event(self, node: str, message: str) -> None: ...

    def step(self, node: str, text: str) -> None: ...

    def finish(self, outcomes: Mapping[str, Any] | None = None) -> None: ...


def event_kind(node: str, message: str) -> str:
    """What an applier event means, for machines (``kind`` in ``--json``) and the live
    display alike: ``info`` (not about one host), ``failed`` (the host failed), ``done``
    (its restart step ended: the host is done), else ``progress`` (a step on the host)."""
    if node == "hyprov":
        return "info"
    if message.startswith(("failed:", "health check failed")):
        return "failed"
    if message in ("restarted", "no restart command configured"):
        return "done"
    return "progress"


def is_live_terminal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and env.get("TERM", "") != "dumb"


def color_allowed(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return not env.get("NO_COLOR")


def for_apply(stream: TextIO, nodes: Sequence[str], *, as_json: bool,
              env: Mapping[str, str] | None = None, no_color: bool = False) -> Display:
    """The display an apply/destroy writing to ``stream`` uses (see the module doc);
    ``no_color``: the ``--no-color`` flag, as NO_COLOR."""
    if as_json:
        return JsonLines(stream)
    if is_live_terminal(stream, env):
        return LiveDisplay(stream, nodes, color=color_allowed(env) and not no_color)
    return PlainLines(stream)


class PlainLines:
    """One line per event: ``node: message``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def event(self, node: str, message: str) -> None:
        with self.lock:
            print(f"{node}: {message}", file=self.stream, flush=True)

    def step(self, node: str, text: str) -> None:
        pass

    def finish(self, outcomes: Mapping[str, Any] | None = None) -> None:
        pass


class JsonLines(PlainLines):
    """One JSON object per event: ``{"node": ..., "event": ..., "kind": ...}``."""

    def event(self, node: str, message: str) -> None:
        with self.lock:
            print(json.dumps({"node": node, "event": message, "kind": event_kind(node, message)}),
                  file=self.stream, flush=True)


class _Host:
    __slots__ = ("message", "status")

    def __init__(self) -> None:
        self.status = "waiting"
        self.message = ""


class LiveDisplay:
    """One line per host, redrawn in place (throttled); other messages scroll above.

    Only ``\\r``, cursor up (``CSI n A``), erase line (``CSI 2K``), erase below
    (``CSI J``) and colours (``CSI ...m``, unless NO_COLOR) are written: any
    ANSI terminal, no terminfo, no dependency.
    """

    def __init__(self, stream: TextIO, nodes: Sequence[str], *, color: bool = True,
                 clock: Callable[[], float] = time.monotonic, size: Callable[[], os.terminal_size] | None = None,
                 ticker: bool = True) -> None:
        self.stream = stream
        self.color = color
        self.clock = clock
        self.size = size or (lambda: shutil.get_terminal_size((80, 24)))
        self.hosts: dict[str, _Host] = {n: _Host() for n in nodes}
        self.lock = threading.Lock()
        self.started = clock()
        self.drawn = 0  # lines of the block currently on the screen, cursor just below it
        self.last_draw = -1.0
        self.dirty = True
        self.done = False
        self.redraws = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if ticker:
            self._ticker = threading.Thread(target=self._tick, name="hyprov-progress", daemon=True)
            self._ticker.start()

    # -- feeding ---------------------------------------------------------------

    def event(self, node: str, message: str) -> None:
        with self.lock:
            if self.done:
                return
            kind = event_kind(node, message)
            if kind == "info":  # not about one host: scroll it above the block, now
                self._clear_block()
                self._write(self._fit(f"{node}: {message}") + "\n")
                self._draw()
                return
            host = self.hosts.setdefault(node, _Host())
            if kind == "failed":
                host.status = _FAILED
                host.message = message.removeprefix("failed: ").removeprefix(f"{node}: ")
            else:
                if host.status != _FAILED:
                    host.status = "done" if kind == "done" else "running"
                host.message = message
            self._maybe_draw()

    def step(self, node: str, text: str) -> None:
        with self.lock:
            host = self.hosts.setdefault(node, _Host())
            if self.done or host.status == _FAILED:
                return
            host.status, host.message = "running", text
            self._maybe_draw()

    def finish(self, outcomes: Mapping[str, Any] | None = None) -> None:
        """Final statuses (the applier's outcomes) drawn once more, unthrottled; the
        block then stays on the screen and the cursor is below it."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        with self.lock:
            if self.done:
                return
            for name, o in (outcomes or {}).items():
                host = self.hosts.setdefault(name, _Host())
                status = getattr(o, "status", "done")
                detail = str(getattr(o, "detail", "")).removeprefix(f"{name}: ")
                if status == "not started" and not detail and host.status == "running":
                    status = _INTERRUPTED  # cut off mid-step (Ctrl-C, an error elsewhere): not "not started"
                host.status = "done" if status == "files done" else status
                if detail and (host.status != "done" or not host.message):
                    host.message = detail
                elif not host.message and host.status != status:  # "files done": more than "done" says
                    host.message = status
            self._draw(final=True)
            self.done = True

    # -- drawing (under self.lock) ---------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(1 / MAX_FPS):
            with self.lock:  # pending updates, else the clock once a second
                if not self.done and (self.dirty or self.clock() - self.last_draw >= 1):
                    self._draw()

    def _maybe_draw(self) -> None:
        self.dirty = True
        if self.clock() - self.last_draw >= 1 / MAX_FPS:
            self._draw()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: the apply goes on

    def _paint(self, text: str, status: str) -> str:
        return f"{_CSI}{_COLORS[status]}m{text}{_CSI}0m"

    def _fit(self, text: str) -> str:
        width = max(20, self.size().columns - 1)  # never the last column: no auto-wrap
        return text if len(text) <= width else text[: width - 1] + "…"

    def _clear_block(self) -> None:
        if self.drawn:
            self._write(f"\r{_CSI}{self.drawn}A{_CSI}J")
            self.drawn = 0

    def _lines(self, final: bool) -> list[str]:
        counts: dict[str, int] = {}
        for h in self.hosts.values():
            counts[h.status] = counts.get(h.status, 0) + 1
        elapsed = self.clock() - self.started
        parts = [f"{counts[s]} {s}" for s in ("done", "running", "waiting", "failed", _INTERRUPTED, "not started",
                                              "skipped")
                 if counts.get(s)]
        head = f"{'Finished' if final else 'Applying'}: {len(self.hosts)} host(s): {', '.join(parts)} ({elapsed:.1f}s)"
        names = list(self.hosts)
        room = max(3, self.size().lines - 3)
        shown, chosen = names, set(names)
        if len(names) > room - 1:  # the busy and failed ones first; a summary for the rest
            rank = {"failed": 0, "running": 1, _INTERRUPTED: 1, "not started": 2, "waiting": 3, "skipped": 4, "done": 5}
            pos = {n: i for i, n in enumerate(names)}
            chosen = set(sorted(names, key=lambda n: (rank.get(self.hosts[n].status, 1), pos[n]))[: room - 2])
            shown = [n for n in names if n in chosen]
        width = max((len(n) for n in shown), default=0)
        out = [self._fit(head)]
        for n in shown:
            h = self.hosts[n]
            line = self._fit(f"  {n:<{width}}  {h.status:<11} {h.message}".rstrip())
            at = 4 + width  # colour the status word only
            if self.color and h.status in _COLORS and len(line) >= at + len(h.status):
                line = line[:at] + self._paint(h.status, h.status) + line[at + len(h.status):]
            out.append(line)
        if len(shown) < len(names):
            rest = [self.hosts[n].status for n in names if n not in chosen]
            summary = ", ".join(f"{rest.count(s)} {s}" for s in dict.fromkeys(rest))
            out.append(self._fit(f"  … and {len(rest)} more ({summary})"))
        return out

    def _draw(self, final: bool = False) -> None:
        lines = self._lines(final)
        up = f"\r{_CSI}{self.drawn}A" if self.drawn else "\r"
        body = "".join(f"{_CSI}2K{line}\n" for line in lines)
        tail = f"{_CSI}J" if len(lines) < self.drawn else ""
        self._write(up + body + tail)
        self.drawn = len(lines)
        self.last_draw = self.clock()
        self.dirty = False
        self.redraws += 1
