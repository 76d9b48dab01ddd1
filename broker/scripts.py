"""lambdalite's Lua scripts: one ``.lua`` file each in ``broker/lua/``, called with KEYS and ARGV by name.

Each file starts with a header of ``--`` comments that names what the script is given and returns::

    -- cost_record: count one invocation in a function's cost hash.
    -- include: move
    -- KEYS[1] cost: the function's cost hash
    -- KEYS[2] cost_aside: where a cost key of another type is moved (quarantine.aside)
    -- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
    -- ARGV[3..] pairs: field, increment, ... (the rest of ARGV)
    -- Returns: what the guard moved, in quarantine.report's format.

``include: NAME`` puts ``broker/lua/lib/NAME.lua`` (Lua functions shared by several scripts) before
the script's text. A ``[N..]`` position names a list that takes the rest of KEYS or ARGV; its layout is
documented in the header. The header is read when the module that uses the script is imported (a
malformed one raises :class:`~broker.errors.ScriptError` then), and each call's ``keys`` and ``args``
are checked against it (a missing or unknown name raises it at the first call).

Three ways to run a script, for the three ways lambdalite talks to Redis:

- ``script(client, keys=..., args=...)`` runs it now through redis-py's :class:`~redis.commands.core.Script`:
  EVALSHA, and after a NOSCRIPT (a restarted or flushed Redis) SCRIPT LOAD and EVALSHA again.
- ``script.queue(pipe, keys=..., args=...)`` queues it on a pipeline or transaction as EVAL with its
  text. Not redis-py's ``Script``: on a pipeline it sends SCRIPT EXISTS in a round trip of its own
  before every execute (``bench/lua_scripts.py``: 1.24x the client's CPU on the worker's outcome
  transaction). Not a bare EVALSHA either (0.88x): a NOSCRIPT inside MULTI/EXEC, after a restart
  of Redis, would apply the transaction's other writes without the script's. Redis caches what
  EVAL runs by its SHA, so it compiles each text once.
- ``script.command(keys=..., args=...)`` is the EVALSHA command as a list, for
  :func:`broker.connection.run`'s packed round trips; the caller loads the script (:meth:`Lua.load`)
  when a reply is NOSCRIPT and runs the call again.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.commands.core import Script

from broker.errors import ScriptError

FOLDER = Path(__file__).with_name("lua")
LIBRARY = FOLDER / "lib"

_SLOT = re.compile(r"^--\s+(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+):\s*(\S.*)$")
_INCLUDE = re.compile(r"^--\s+include:\s*(\w+(?:\s*,\s*\w+)*)\s*$")
_RETURNS = re.compile(r"^--\s+Returns:\s*\S")
_TITLE = re.compile(r"^--\s+(\w+):\s*\S")


@dataclass(frozen=True, slots=True)
class Slot:
    """One named position of KEYS or ARGV; ``rest``: a list that takes every position from here on."""

    position: int
    name: str
    meaning: str
    rest: bool = False


@dataclass(frozen=True, slots=True)
class Header:
    """What a script's header declares."""

    title: str
    includes: tuple[str, ...]
    keys: tuple[Slot, ...]
    args: tuple[Slot, ...]
    returns: str


def compact(text: str) -> str:
    """``text`` without its comment lines, blank lines and indentation: what is sent to Redis. A
    transaction sends its scripts' text with every EVAL, and Redis hashes it each time; the headers
    and the indentation are for readers. (No script has a string that spans lines.)"""
    return "".join(stripped + "\n" for line in text.splitlines()
                   if (stripped := line.strip()) and not stripped.startswith("--"))


def parse_header(text: str, where: str) -> Header:
    """The header of a script's ``text`` (``where`` names it in errors). Raises ScriptError when a
    title, a position, a name or the Returns line is missing, repeated or out of order."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    if not lines or not (title := _TITLE.match(lines[0])):
        raise ScriptError(f"{where}: the first line must be '-- NAME: what the script does'")
    includes: list[str] = []
    slots: dict[str, list[Slot]] = {"KEYS": [], "ARGV": []}
    returns = ""
    for line in lines[1:]:
        if m := _INCLUDE.match(line):
            includes.extend(name.strip() for name in m.group(1).split(","))
        elif m := _SLOT.match(line):
            kind, position, rest, name, meaning = m.groups()
            found = slots[kind]
            if found and found[-1].rest:
                raise ScriptError(f"{where}: {kind}[{position}] comes after {kind}[{found[-1].position}..], the rest")
            if int(position) != len(found) + 1:
                raise ScriptError(f"{where}: {kind}[{position}] {name} is not at position {len(found) + 1}")
            if name in {s.name for s in slots["KEYS"] + slots["ARGV"]}:
                raise ScriptError(f"{where}: the name {name} is given twice")
            found.append(Slot(int(position), name, meaning, rest is not None))
        elif _RETURNS.match(line):
            returns = line.split(":", 1)[1].strip()
        elif re.match(r"^--\s+(KEYS|ARGV)\b", line):
            raise ScriptError(f"{where}: cannot read {line!r}: write '-- KEYS[1] name: meaning'")
    if not returns:
        raise ScriptError(f"{where}: the header has no '-- Returns: ...' line")
    return Header(title.group(1), tuple(includes), tuple(slots["KEYS"]), tuple(slots["ARGV"]), returns)


class _Flattener:
    """Puts named KEYS or ARGV in a header's order. Built once per script: a call is on every hot path
    (the worker's end of a job queues six), so it does one ``itemgetter`` and a length check, and
    works out what is wrong only when something is."""

    __slots__ = ("slots", "kind", "title", "count", "fixed", "rest")

    def __init__(self, slots: Sequence[Slot], kind: str, title: str) -> None:
        self.slots, self.kind, self.title, self.count = tuple(slots), kind, title, len(slots)
        names = [s.name for s in slots if not s.rest]
        self.rest = slots[-1].name if slots and slots[-1].rest else None
        get = operator.itemgetter(*names) if names else None
        # itemgetter of one name returns the value itself, of several a tuple.
        self.fixed: Callable[[Mapping[str, Any]], list[Any]] = (
            (lambda given: []) if get is None else
            (lambda given: [get(given)]) if len(names) == 1 else (lambda given: list(get(given))))

    def __call__(self, given: Mapping[str, Any]) -> list[Any]:
        try:
            out = self.fixed(given)
            rest = given[self.rest] if self.rest is not None else ()
        except KeyError:
            raise self._mismatch(given) from None
        if len(given) != self.count:
            raise self._mismatch(given)
        if self.rest is not None:
            if isinstance(rest, str | bytes) or not isinstance(rest, Sequence):
                raise ScriptError(f"script {self.title}: {self.kind} {self.rest} takes a list "
                                  f"(the rest of {self.kind})")
            out.extend(rest)
        return out

    def _mismatch(self, given: Mapping[str, Any]) -> ScriptError:
        names = {s.name for s in self.slots}
        missing = [s.name for s in self.slots if s.name not in given]
        unknown = [name for name in given if name not in names]
        return ScriptError(f"script {self.title}: {self.kind} " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"not in its header {', '.join(unknown)}" if unknown else "") if part))


def _named(slots: Sequence[Slot], given: Sequence[Any], kind: str, title: str) -> dict[str, Any]:
    fixed = [s for s in slots if not s.rest]
    rest = slots[-1] if slots and slots[-1].rest else None
    if len(given) < len(fixed) or (rest is None and len(given) > len(fixed)):
        raise ScriptError(f"script {title} takes {len(fixed)}{' or more' if rest else ''} {kind}, not {len(given)}")
    out = {slot.name: value for slot, value in zip(fixed, given, strict=False)}
    if rest is not None:
        out[rest.name] = list(given[len(fixed):])
    return out


class Lua:
    """One script: its header, its text (includes first) and its SHA; see the module's docstring."""

    def __init__(self, text: str, where: str) -> None:
        self.header = parse_header(text, where)
        self.name = self.header.title
        parts = []
        for name in self.header.includes:
            path = LIBRARY / f"{name}.lua"
            if not path.is_file():
                raise ScriptError(f"{where}: includes {name}, but there is no {path}")
            parts.append(path.read_text())
        self.text = compact("".join(parts) + text)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self._script: Script | None = None
        self._keys = _Flattener(self.header.keys, "KEYS", self.name)
        self._args = _Flattener(self.header.args, "ARGV", self.name)

    def arguments(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV in the header's order, from ``keys`` and ``args`` by name. Raises ScriptError
        for a name missing or not in the header."""
        return self._keys(keys), self._args(args)

    def by_name(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The inverse of :meth:`arguments`: ``keys`` and ``args`` in the header's order (as they cross
        a process boundary) by name. Raises ScriptError when there are too few or too many."""
        return (_named(self.header.keys, keys, "KEYS", self.name), _named(self.header.args, args, "ARGV", self.name))

    def __call__(self, client: redis.Redis, keys: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """Run the script now (EVALSHA, loaded again after NOSCRIPT); returns its reply."""
        flat_keys, flat_args = self.arguments(keys, args)
        if self._script is None:
            self._script = Script(client, self.text)
        return self._script(keys=flat_keys, args=flat_args, client=client)

    def queue(self, pipe: Any, keys: Mapping[str, Any], args: Mapping[str, Any]) -> None:
        """Queue the script on ``pipe`` (a redis-py pipeline or transaction) as EVAL with its text."""
        flat_keys = self._keys(keys)
        pipe.eval(self.text, len(flat_keys), *flat_keys, *self._args(args))

    def command(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> list[Any]:
        """The EVALSHA command, for :func:`broker.connection.run`."""
        flat_keys, flat_args = self.arguments(keys, args)
        return ["EVALSHA", self.sha, len(flat_keys), *flat_keys, *flat_args]

    def load(self, client: redis.Redis) -> None:
        """SCRIPT LOAD: after a NOSCRIPT reply to :meth:`command`."""
        client.script_load(self.text)


def load(name: str, folder: Path = FOLDER) -> Lua:
    """The script ``folder/NAME.lua``; raises ScriptError if it is missing or its header is malformed."""
    path = folder / f"{name}.lua"
    try:
        text = path.read_text()
    except OSError as e:
        raise ScriptError(f"cannot read the script {path}: {e}") from e
    script = Lua(text, str(path))
    if script.name != name:
        raise ScriptError(f"{path}: its header names it {script.name}, not {name}")
    return script
