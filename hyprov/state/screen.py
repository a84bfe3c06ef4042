"""The state's secret screen and address grammar: no private key or password ever enters
a state (checked per record, and over the whole text at once when it is read), and every
resource address parses (``TYPE``, ``TYPE.NAME``, either with ``["KEY"]`` or ``[N]``)."""

from __future__ import annotations

import json
import re
from collections.abc import (
    Iterable,
    Mapping,
)

from hyprov.errors import StateError

# --------------------------------------------------------------------------
# The secret guard

# the non-ASCII letters case-insensitive matching equates with ASCII ones (re's documentation)
_ASCII_LOOKALIKES = "\u0130\u0131\u017f\u212a"
_SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "private_key",
    "privatekey",
    "privkey",
    "secret_key",
    "client_secret",
)
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
# ``pg_password = hunter2`` (kong.conf) or ``KONG_PG_PASSWORD=hunter2`` (env) inside
# recorded file content; masked values (kongconf's ``(sensitive)``, ``***``) pass.
_PASSWORD_LINE = re.compile(
    r"^[ \t]*[A-Za-z0-9_]*(?:password|passwd|passphrase)[ \t]*=[ \t]*(?P<value>.*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_MASKED = re.compile(r'^(?:\(sensitive\)|\*+|<redacted>|""|)$')
_SUSPECT_NAME = re.compile("|".join(_SECRET_NAME_PARTS))


def _secret_name(name: str) -> bool:
    norm = name.lower().replace("-", "_")
    return any(part in norm for part in _SECRET_NAME_PARTS)


def check_no_secrets(value: object, where: str, *, names: bool = True) -> None:
    """Refuse secret-looking attribute names, PEM private keys and unmasked
    ``...password = value`` lines (kong.conf / env content) in values.

    State files are copied, backed up and (later) stored in PostgreSQL; a
    secret there leaks. Store a fingerprint or digest instead. ``where`` names
    the position for the message, e.g. ``resources[cert.cp1].attributes``.
    With ``names=False`` only values are checked (for mappings whose keys are
    addresses or node names, not attribute names).
    """
    if isinstance(value, str):
        if _PEM_PRIVATE.search(value):
            raise StateError(
                f"refusing to store a secret in state: {where} holds a PEM private key",
                hint="record the key's fingerprint or the file's digest, never the key",
            )
        for m in _PASSWORD_LINE.finditer(value):
            if not _MASKED.match(m["value"]):
                raise StateError(
                    f"refusing to store a secret in state: {where} holds an unmasked "
                    "password setting",
                    hint="record masked content (password = (sensitive)) or a digest",
                )
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if names and isinstance(k, str) and _secret_name(k):
                raise StateError(
                    f"refusing to store a secret in state: {where}.{k} "
                    "(the attribute name looks like a secret)",
                    hint="record a digest or fingerprint under a different name, never the secret",
                )
            check_no_secrets(v, f"{where}.{k}", names=names)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_no_secrets(v, f"{where}[{i}]", names=names)


def _plain_text(text: str) -> bool:
    """Substring tests (C speed) that every text the precise check could refuse fails
    (its case-insensitive match takes a long s for an s: no look-alike may pass here)."""
    low = text.lower()
    return ("private key" not in low and "pass" not in low
            and (text.isascii() or not any(c in text for c in _ASCII_LOOKALIKES)))


def _plainly_clean(value: object) -> bool:
    """True when no name or string can possibly trip :func:`check_no_secrets`.

    Two regex searches per mapping (its names, its strings joined), not one per value."""
    if isinstance(value, str):
        return _plain_text(value)
    if isinstance(value, Mapping):
        if _SUSPECT_NAME.search("\x00".join(value).lower().replace("-", "_")):
            return False
        strings = []
        for v in value.values():
            if isinstance(v, str):
                strings.append(v)
            elif isinstance(v, Mapping | tuple) and not _plainly_clean(v):
                return False
        return not strings or _plain_text("\x00".join(strings))
    if isinstance(value, tuple):
        return all(_plainly_clean(v) for v in value)
    return True


# --------------------------------------------------------------------------
# Addresses

_ADDRESS = re.compile(
    r"^(?P<type>[a-z][a-z0-9_]*)"
    r'(?:\.(?P<name>[^.\[\]"\s]+))?'
    r'(?P<key>\[(?:"(?:[^"\\]|\\.)*"|[0-9]+)\])?$'
)
_NODE_NAME = re.compile(r'^[^.\[\]"\s]+$')


def parse_address(address: str) -> tuple[str, str, str]:
    """Split ``file.cp1["/etc/kong/kong.conf"]`` into ``("file", "cp1", '["/etc/kong/kong.conf"]')``.

    Accepted forms: ``TYPE`` (``shared_cert``), ``TYPE.NAME`` (``cert.dp1``),
    either followed by ``["KEY"]`` or ``[N]`` (``ca.intermediate[0]``). Absent
    parts are ``""``. Anything else is a :class:`StateError`, so ``state mv``
    can rewrite the name part safely.
    """
    m = _ADDRESS.match(address)
    if m is None:
        raise StateError(
            f"invalid resource address {address!r}",
            hint='addresses look like TYPE.NAME or TYPE.NAME["KEY"], e.g. file.cp1["/etc/kong/kong.conf"]',
        )
    return m["type"], m["name"] or "", m["key"] or ""


_NESTED_OR_FLOAT = frozenset({dict, list, float})
_AFTER_TYPE = frozenset({"", ".", "["})
# parse_address's grammar for many addresses at once, each one ended by a NUL: one
# fullmatch over all of them instead of one per resource. A NUL anywhere fails it (the
# precise path then judges); it never accepts what parse_address refuses (tested).
# Atomic and possessive: each address matches in one way only, and without them sre keeps
# a backtracking frame per address (0.45 s and 166 MiB for 60,000 addresses, not 0.05 s).
_ADDRESSES_FORM = re.compile(
    r'(?>[a-z][a-z0-9_]*(?:\.[^.\[\]"\s\x00]+)?(?:\[(?:"(?:[^"\\\x00]|\\[^\x00\n])*"|[0-9]+)\])?\x00)*+')


def _addresses_well_formed(addresses: Iterable[str]) -> bool:
    listed = list(addresses)
    joined = "\x00".join(listed) + "\x00"
    # one NUL per address: a NUL inside an address would split it into two valid-looking ones
    return joined.count("\x00") == len(listed) and _ADDRESSES_FORM.fullmatch(joined) is not None


_SECRET_STEMS = ("pass", "priv", "secret")  # every secret word, and "private key", holds one
assert all(any(stem in w for stem in _SECRET_STEMS) for w in (*_SECRET_NAME_PARTS, "private key"))
# In a value (not a name) the precise check refuses only PEM private keys and
# ``...password = value`` lines whose value is not masked.
_PASSWORD_WORD = re.compile(r"passw(?:or)?d|passphrase")
_ASSIGNED = re.compile(r"(?: |\\t)*=")  # on the JSON text: a tab is written \t
_MASKED_REST = re.compile(r"(?: |\\t)*=(?: |\\t)*(?:\(sensitive\)|\*+|<redacted>)?(?: |\\t)*(?:\\n|$)")
_ESCAPE = re.compile(r"\\u(?!00[01])")  # json.dumps(ensure_ascii=False) escapes control characters only


def _screened_clean(text: str) -> bool:
    """True when no secret can hide anywhere in the state text, so the per-resource
    check (:func:`check_no_secrets`) can be skipped: it would pass. Three ``str.find``
    scans of the whole text (C speed) for the stems of every secret word, and a look at
    the JSON string around each hit (``secret_env`` names, masked kong.conf password
    lines). Whatever could disguise a word from a substring search (a ``\\uXXXX``
    escape of a letter, a non-ASCII look-alike) takes the precise, per-resource path."""
    low = text.lower()
    if len(low) != len(text) or ("\\u" in low and _ESCAPE.search(low)):
        return False  # positions in low and text must agree; \u0070assword hides "pass"
    if not text.isascii() and any(c in text for c in _ASCII_LOOKALIKES):
        return False
    names: set[str] = set()  # harmless names met so far (secret_env: once per node)
    for stem in _SECRET_STEMS:
        at = low.find(stem)
        while at >= 0:
            if low[at - 1] == '"':  # a string starting with the stem: most often a name seen before
                end = low.find('"', at)
                if low[at:end] in names and low.startswith('": ', end):
                    at = low.find(stem, end)
                    continue
            end = _harmless_string_end(text, low, at, names)
            if end < 0:
                return False
            at = low.find(stem, end)
    return True


def _harmless_string_end(text: str, low: str, at: int, names: set[str]) -> int:
    """The end of the JSON string holding the secret-looking stem at ``at`` when the
    precise check passes that string, else -1; a harmless plain name joins ``names``.
    Letters outside strings are only in true/false/null, so the nearest quotes around
    ``at`` delimit it, unless one is escaped."""
    start, end = low.rfind('"', 0, at), low.find('"', at)
    if start <= 0 or end < 0 or low[start - 1] == "\\" or low[end - 1] == "\\":
        return -1  # an escaped quote nearby: let the precise path judge
    after = end + 1
    while low[after:after + 1] in (" ", "\n", "\r", "\t"):
        after += 1
    if low.startswith(":", after):  # a name: the precise rule itself
        raw = text[start:end + 1]
        if "\\" not in raw:
            if _secret_name(raw[1:-1]):
                return -1
            names.add(low[start + 1:end])
            return after
        return -1 if _secret_name(json.loads(raw)) else after
    if low.find("private key", start, end) >= 0:
        return -1  # a PEM private key header (refused in any case) or close enough
    for m in _PASSWORD_WORD.finditer(low, start + 1, end):
        if _ASSIGNED.match(low, m.end(), end) and not _MASKED_REST.match(text, m.end(), end):
            return -1  # pg_password = hunter2
    return after

