"""The running revision of ``lambdalite.toml`` and of the handlers' code, shared through Redis.

One authority (the scaler, :mod:`workers.reload`) validates the file as ``lambdalite check`` does and
publishes what it accepted: a counter, the file's SHA-256, a digest of each function's code and the
file's text, in one transaction with a message on :data:`CHANNEL`. Every other process follows that
revision (:class:`Follower`, a thread blocked on the channel: an idle stack stays idle) and reads the
file's text from Redis, never from disk, so they all run one configuration and ``lambdalite invoke``
answers for the function the running stack knows. The last refused edit is kept beside it, for
``lambdalite status``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from broker import quarantine
from broker.connection import TRANSIENT, Backoff
from broker.errors import ConfigError
from broker.registry import Function, Registry, parse_registry

log = logging.getLogger(__name__)

KEY = "lambdalite:revision"  # hash: number, sha256, code (JSON: file -> SHA-256), config (the file's text), at, refused
CHANNEL = "lambdalite:revision"  # the number of each revision accepted
RELOAD_CHANNEL = "lambdalite:reload"  # `lambdalite reload`: the authority looks at the files again
WAKE = 5.0  # seconds a follower waits on its channel before it looks whether it is asked to stop
SKIP = ("__pycache__", ".git", "node_modules")  # folders under a handler package that are not its code


@dataclass(frozen=True)
class Revision:
    """One accepted revision: ``number`` counts them, ``sha256`` is the file's, ``code`` the SHA-256
    of each code file (see :func:`code_digests`), ``at`` when it was accepted (epoch seconds)."""

    number: int
    sha256: str
    code: dict[str, str]
    at: float

    @property
    def version(self) -> str:
        """What START lines say as the ``Version:``."""
        return str(self.number)

    def describe(self) -> dict[str, Any]:
        return {"number": self.number, "sha256": self.sha256, "accepted_at": self.at}


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# -- a function's code ------------------------------------------------------------------------


def _module_files(root: Path, module: str) -> tuple[Path | None, list[Path]]:
    """The file or folder a dotted module name resolves to under ``root`` (its own code) and the
    folder of its top-level package (shared code); (None, []) for a module from elsewhere."""
    parts = module.split(".")
    top = root / parts[0]
    if not top.is_dir():
        single = root / f"{parts[0]}.py"
        return (single, [single]) if single.is_file() else (None, [])
    own = root.joinpath(*parts)
    own = own if own.is_dir() else own.with_suffix(".py")
    return own, [top]


def _walk(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        return
    for child in sorted(path.iterdir()):
        if child.name in SKIP or child.name.startswith("."):
            continue
        yield from _walk(child)


def code_files(registry: Registry) -> dict[str, list[Path]]:
    """The files that are each function's code, under the folder of ``lambdalite.toml``.

    A Python handler's: its module (a package: its folder) and the rest of its top-level package,
    less the other functions' own handler modules (so an edit of one handler restarts only its
    function's workers, and an edit of a shared module every function that may import it). A
    command's: each argument that names a file. A provided runtime's: its ``bootstrap``. Code from
    elsewhere (an installed package) is not watched.
    """
    root = registry.path.resolve().parent
    owns: dict[str, Path] = {}
    shared: dict[str, list[Path]] = {}
    out: dict[str, list[Path]] = {}
    for fn in registry:
        if fn.provided:  # a runtime: its bootstrap (what the runtime loads besides is its own affair)
            boot = fn.bootstrap_path(registry.path)
            out[fn.name] = [boot] if boot.is_file() else []
        elif fn.handler is not None:
            own, folders = _module_files(root, fn.handler.rpartition(".")[0])
            if own is not None:
                owns[fn.name] = own
            shared[fn.name] = folders
        else:
            files = [p for arg in fn.command or () if (p := (root / arg)).is_file()]
            out[fn.name] = files
    others = set(owns.values())
    for name, folders in shared.items():
        mine = owns.get(name)
        files = [f for folder in folders for f in _walk(folder)
                 if not any(f == o or o in f.parents for o in others if o != mine)]
        if mine is not None:
            files += [f for f in _walk(mine) if f not in files]
        out[name] = files
    return out


def _name(root: Path, f: Path) -> str:
    return str(f.relative_to(root)) if root in f.parents else str(f)


def code_digests(registry: Registry) -> dict[str, str]:
    """The SHA-256 of each code file of the registry's functions, by its path (relative to the
    folder of ``lambdalite.toml``); an unreadable file counts as empty, so a file saved half-way is
    seen again when its writer closes it."""
    root = registry.path.resolve().parent
    out = {}
    for files in code_files(registry).values():
        for f in files:
            name = _name(root, f)
            if name not in out:
                try:
                    out[name] = digest(f.read_bytes())
                except OSError:
                    out[name] = digest(b"")
    return out


def watched(registry: Registry) -> list[tuple[Path, bool]]:
    """The folders to watch for edits, each with whether to watch below it too."""
    folders: dict[Path, bool] = {registry.path.resolve().parent: False}
    root = registry.path.resolve().parent
    for fn in registry:
        if fn.provided:
            folders.setdefault(fn.bootstrap_path(registry.path).parent, False)
        elif fn.handler is not None:
            _own, shared = _module_files(root, fn.handler.rpartition(".")[0])
            for folder in shared:
                if folder.is_dir():
                    folders[folder] = True
        else:
            for arg in fn.command or ():
                if (root / arg).is_file():
                    folders.setdefault((root / arg).parent, False)
    return sorted(folders.items())


# -- Redis ------------------------------------------------------------------------------------


def _field(raw: dict[bytes, bytes], name: str) -> str:
    return raw.get(name.encode(), b"").decode(errors="replace")


def _parse(raw: dict[bytes, bytes]) -> tuple[Revision, bytes] | None:
    try:
        number = int(_field(raw, "number"))
        code = json.loads(_field(raw, "code") or "{}")
        at = float(_field(raw, "at") or 0)
    except ValueError:
        return None
    if not isinstance(code, dict) or b"config" not in raw:
        return None
    return Revision(number, _field(raw, "sha256"), code, at), raw[b"config"]


def read(client: redis.Redis) -> tuple[Revision, bytes] | None:
    """The running revision and the file's text as it was accepted, or None if none was published
    (or the key is damaged: it is moved aside, and the next acceptance writes it afresh)."""
    try:
        raw = cast("dict[bytes, bytes]", client.hgetall(KEY))
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        quarantine.repair(client, {KEY: "hash"})
        return None
    return _parse(raw) if raw else None


def refused(client: redis.Redis) -> str:
    """The one line that refused the last edit since the running revision, or ''."""
    try:
        raw = client.hget(KEY, "refused")
    except redis.ResponseError:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else ""


def publish(client: redis.Redis, raw: bytes, code: dict[str, str], force: bool = False) -> Revision:
    """Make ``raw`` (already validated) with ``code`` the running revision and tell every follower;
    the same file and code as the running revision keep its number unless ``force``. Raises redis
    errors."""
    sha = digest(raw)
    code_json = json.dumps(code, sort_keys=True)
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(KEY)  # type: ignore[no-untyped-call]  # redis-py's stub
                current = _parse(cast("dict[bytes, bytes]", pipe.hgetall(KEY)))
            except redis.ResponseError as e:
                if not quarantine.wrong_type(e):
                    raise
                quarantine.repair(client, {KEY: "hash"})
                continue
            if current is not None and not force and current[0].sha256 == sha and current[0].code == code:
                pipe.unwatch()
                clear_refused(client)
                return current[0]
            number = (current[0].number if current is not None else 0) + 1
            at = time.time()
            pipe.multi()
            pipe.delete(KEY)
            pipe.hset(KEY, mapping={"number": number, "sha256": sha, "code": code_json, "config": raw, "at": at})
            pipe.publish(CHANNEL, number)
            try:
                pipe.execute()
            except redis.WatchError:
                continue
            return Revision(number, sha, code, at)


def refuse(client: redis.Redis, line: str) -> None:
    """Keep the line that refused an edit, for ``lambdalite status``. Raises redis errors."""
    with client.pipeline(transaction=False) as pipe:
        pipe.exists(KEY)
        pipe.hset(KEY, "refused", line)
        exists, _ = pipe.execute(raise_on_error=False)
    if not exists:
        client.delete(KEY)  # no revision yet: a lone 'refused' field is not one


def clear_refused(client: redis.Redis) -> None:
    """Forget the refused edit (the file is the running revision's again). Raises redis errors."""
    client.hdel(KEY, "refused")


def running(client: redis.Redis, path: Path) -> Registry | None:
    """The registry of the running revision (``path`` names the file in messages), or None when no
    revision was published. Raises :class:`ConfigError` if the accepted text no longer validates
    here (a stack of another lambdalite version), redis errors."""
    found = read(client)
    if found is None:
        return None
    rev, text = found
    registry = parse_registry(text, path)
    registry.revision = rev
    return registry


def changed(old: Registry, new: Registry, old_code: dict[str, str], new_code: dict[str, str]) -> set[str]:
    """Functions of ``new`` that are new, or whose definition or one of whose code files differ from
    ``old``'s."""
    root = new.path.resolve().parent
    edited = {name for name in old_code.keys() | new_code.keys() if old_code.get(name) != new_code.get(name)}
    files = code_files(new)
    out = set()
    for fn in new:
        before: Function | None = old.functions.get(fn.name)
        if before is None or before != fn or any(_name(root, f) in edited for f in files.get(fn.name, ())):
            out.add(fn.name)
    return out


class Follower:
    """Follows the running revision from a thread blocked on :data:`CHANNEL`.

    ``apply(registry)`` is called (from that thread) with each revision newer than the one the
    follower has, and once at :meth:`start` for the revision running then; it must not raise. After
    a lost connection the follower subscribes again and reads the key, so a revision accepted in
    between is not missed.
    """

    def __init__(self, client: redis.Redis, path: Path, apply: Callable[[Registry], None],
                 known: int = 0, name: str = "revision-follower") -> None:
        self.client = client
        self.path = path
        self.apply = apply
        self.number = known
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ready = threading.Event()  # subscribed, and the revision running then applied

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = WAKE + 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def catch_up(self) -> None:
        """Read the running revision and apply it if it is newer than the follower's."""
        try:
            registry = running(self.client, self.path)
        except ConfigError as e:
            log.error("the running revision does not validate here: %s; keeping revision %d", e, self.number)
            return
        if registry is None or registry.revision is None or registry.revision.number <= self.number:
            return
        self.number = registry.revision.number
        try:
            self.apply(registry)
        except Exception:  # a bug in applying costs this revision, not the follower
            log.exception("could not apply revision %d", self.number)
            return
        log.info("now running revision %d of %s", self.number, self.path.name)

    def _run(self) -> None:
        backoff = Backoff(log, "following the running revision")
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                self.catch_up()
                self.ready.set()
                backoff.succeeded()
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=WAKE) is not None:
                        self.catch_up()
            except TRANSIENT as e:
                self._stop.wait(backoff.failed(e))
            except Exception:  # never let the thread die: the process would stop following
                log.exception("following the running revision failed; trying again")
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(Exception):  # closing a broken connection may fail too
                    pubsub.close()
