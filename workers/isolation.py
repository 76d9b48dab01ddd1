"""What a sandbox does to itself before it imports a handler: cut the descriptors it inherited,
give itself a private /tmp, take the function's environment, and switch to the sandbox identity.

A private /tmp is what a Lambda execution environment has: each worker owns a folder on the host
(below a folder only the stack's user can enter), bind-mounted on /tmp in its sandbox's own mount
namespace, kept between that worker's invocations and removed when the worker retires. As root the
sandbox makes the namespace itself; otherwise it needs an unprivileged user namespace. Where
neither is possible the stack says so once at start and each invocation gets its own TMPDIR, as
before (``LAMBDALITE_PRIVATE_TMP=0`` chooses that too), made afresh at one path of its worker's
(:class:`InvocationFolder`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from broker.environment import (
    Identity,
    apply,
    become,
    close_inherited,
    sandbox_environment,
    sandbox_identity,
)
from broker.kernel import try_in_child
from broker.registry import Function
from broker.settings import Settings, load_settings

log = logging.getLogger("lambdalite.isolation")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_SLAVE = 2, 4, 32, 4096, 16384, 1 << 19
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(None, use_errno=True)
SANDBOX_TMP = "/tmp"  # where a sandbox with a private /tmp sees it
_MARK = ".env-"  # lambdalite-<function>-<worker pid>.env-<random>: a worker's private /tmp folder


@dataclass(frozen=True, slots=True)
class Plan:
    """How this stack's sandboxes are isolated; decided once, in the scaler, and inherited."""

    settings: Settings
    identity: Identity | None
    private_tmp: str  # "namespace" (root), "userns" (an unprivileged user namespace) or "" (none)


_plan: Plan | None = None


def plan(settings: Settings | None = None) -> Plan:
    """The plan of this process tree, decided on first use (and logged then, once)."""
    global _plan
    if _plan is None:
        _plan = decide(settings or load_settings())
    return _plan


def use(the_plan: Plan) -> None:
    """Make ``the_plan`` this process tree's (benches compare set-ups side by side in one process)."""
    global _plan
    _plan = the_plan


def decide(settings: Settings) -> Plan:
    identity = sandbox_identity(settings)
    mode = ""
    if not settings.private_tmp:
        log.info("private /tmp off (LAMBDALITE_PRIVATE_TMP=0): each invocation gets its own TMPDIR")
    else:
        mode = "namespace" if os.geteuid() == 0 else "userns"
        why = _probe(mode, settings)
        if why is not None:
            log.warning("private /tmp unavailable (%s): each invocation gets its own TMPDIR instead; "
                        "LAMBDALITE_PRIVATE_TMP=0 says this is meant", why)
            mode = ""
    if identity is not None:
        grant_buckets(settings, identity)
        log.info("handlers run as %s (uid %d, gid %d), with no new privileges", identity.name, identity.uid,
                 identity.gid)
    elif os.geteuid() == 0:
        log.warning("handlers run as root (LAMBDALITE_SANDBOX_USER=%s): they can reach everything the stack can",
                    settings.sandbox_user)
    return Plan(settings, identity, mode)


def grant_buckets(settings: Settings, identity: Identity) -> None:
    """Let handlers write the buckets, as a function's role may write its S3 buckets: the buckets
    folder and each bucket folder in it, where the stack's user owns them, pass to the sandbox user
    (not recursively: objects stay whose they are, and stay readable as the files source leaves them)."""
    root = settings.buckets
    try:
        folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())]
    except OSError:
        return  # no buckets folder (yet): the files source says so
    for folder in folders:
        with contextlib.suppress(OSError):
            if folder.stat().st_uid == os.geteuid():
                os.chown(folder, identity.uid, identity.gid)


def _probe(mode: str, settings: Settings) -> str | None:
    """Whether a private /tmp can be made here: None, or why not (tried in a child process)."""
    folder = tempfile.mkdtemp(prefix="lambdalite-probe-")
    why = try_in_child(lambda _report: mount_private_tmp(mode, folder, needed_paths(settings)))
    remove_tree(folder)
    return why


def remove_tree(folder: str) -> None:
    """Remove ``folder`` (a private /tmp on the host, or the probe's) unless something is mounted
    below it in this namespace: mounts of the sandboxes live in their own namespaces, and a
    removal must never walk into a project folder through one."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            points = [line.split()[4] for line in f if len(line.split()) > 4]
    except OSError:
        points = []
    real = os.path.realpath(folder)
    if any(p == real or p.startswith(real + os.sep) for p in points):
        log.error("%s has a mount below it in the stack's own namespace; left as it is", folder)
        return
    shutil.rmtree(folder, ignore_errors=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount_private_tmp(mode: str, folder: str, keep: Iterable[str] = ()) -> None:
    """Enter a new mount namespace (and, for "userns", a user namespace mapping only this process's
    own uid and gid) and bind-mount ``folder`` on /tmp there; raises OSError.

    ``keep``: folders the sandbox needs that live below the machine's /tmp (a project folder, its
    buckets, a virtualenv): each is bind-mounted back at its own path inside the private /tmp.
    """
    uid, gid = os.getuid(), os.getgid()
    if mode == "userns":
        _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    else:
        _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted here reaches the machine's namespace; what the machine mounts and unmounts
    # reaches this one (a bucket made read-only, then writable again, is seen so by a warm sandbox).
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")
    for path in _below_tmp(keep):
        target = os.path.join(folder, os.path.relpath(path, SANDBOX_TMP))
        os.makedirs(target, exist_ok=True)
        _check(_libc.mount(path.encode(), target.encode(), None, _MS_BIND | _MS_REC, None),
               f"mount --rbind {path} {target}")
    _check(_libc.mount(folder.encode(), SANDBOX_TMP.encode(), None, _MS_BIND | _MS_REC, None),
           f"mount --rbind {folder} /tmp")
    with contextlib.suppress(OSError):  # set-uid files and devices in /tmp mean nothing then
        _check(_libc.mount(None, SANDBOX_TMP.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV, None),
               "remount /tmp nosuid,nodev")
    if mode == "userns":
        _drop_capabilities()  # else the handler could unmount its /tmp and find the machine's


def _below_tmp(paths: Iterable[str]) -> list[str]:
    """The outermost existing folders of ``paths`` below /tmp (real paths), each once."""
    tmp = os.path.realpath(SANDBOX_TMP)
    found = sorted({os.path.realpath(p) for p in paths if p})
    found = [p for p in found if p.startswith(tmp + os.sep) and os.path.isdir(p)]
    outermost: list[str] = []
    for path in found:  # sorted: a folder comes before those inside it
        if not any(path.startswith(kept + os.sep) for kept in outermost):
            outermost.append(path)
    return outermost


def needed_paths(settings: Settings) -> list[str]:
    """What a sandbox reads or writes outside its /tmp: the working and task folders, the buckets,
    and the folders Python imports from."""
    return [os.getcwd(), str(settings.config.resolve().parent), str(settings.buckets.resolve()),
            *(p for p in sys.path if p)]


def _drop_capabilities() -> None:
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice, all zero
    _check(_libc.capset(header, data), "capset")


class PrivateTmp:
    """One worker's /tmp: ``host`` is the folder on the machine, seen as /tmp by its sandbox."""

    def __init__(self, fn: Function, identity: Identity | None) -> None:
        # The outer folder is the stack user's alone, so no other sandbox reaches ``host`` by its path.
        self.outer = tempfile.mkdtemp(prefix=f"lambdalite-{fn.name}-{os.getpid()}{_MARK}")
        self.host = os.path.join(self.outer, "tmp")
        self.identity = identity
        try:
            self._make()
        except OSError:
            self.remove()
            raise

    def _make(self) -> None:
        os.mkdir(self.host, 0o700)
        if self.identity is not None:
            os.chown(self.host, self.identity.uid, self.identity.gid)

    def wipe(self) -> None:
        """Empty it, for a new execution environment (the last sandbox broke a limit or died)."""
        remove_tree(self.host)
        with contextlib.suppress(FileExistsError):
            self._make()

    def remove(self) -> None:
        remove_tree(self.outer)


def sweep() -> int:
    """Remove the private /tmp folders (this user's, in the temp folder) of workers that are gone:
    a worker killed outright cannot remove its own. Returns how many were removed."""
    root = tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        head, mark, _ = name.partition(_MARK)
        pid = head.rpartition("-")[2]
        if not mark or not name.startswith("lambdalite-") or not pid.isdigit():
            continue
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_uid != os.geteuid() or os.path.exists(f"/proc/{pid}"):
                continue
        except OSError:
            continue
        remove_tree(path)
        removed += 1
    return removed


class InvocationFolder(PrivateTmp):
    """Without a private /tmp, where one worker's invocations get their TMPDIRs: each invocation's is
    made afresh by the sandbox at the same path, :attr:`invocation`, and removed after it. One path
    rather than a new one each time, because a sandbox keeps every value it ever gave TMPDIR: the C
    library's ``setenv`` never frees a value it was given (about 100 bytes an invocation, for good).

    It is a private /tmp's folder, not mounted: the outer folder (the stack user's) can be passed
    through but not listed or written, ``host`` is the sandbox identity's alone, and the scaler's
    :func:`sweep` removes it when its worker dies without a word."""

    def __init__(self, fn: Function, identity: Identity | None) -> None:
        super().__init__(fn, identity)
        os.chmod(self.outer, 0o711)  # the sandbox reaches ``host`` by its path
        self.serial = 0

    @property
    def invocation(self) -> str:
        """The next invocation's TMPDIR."""
        return os.path.join(self.host, f"invocation-{self.serial}" if self.serial else "invocation")

    def renew(self) -> None:
        """The last invocation's TMPDIR could not be removed: the next one gets another path."""
        self.serial += 1


def invocation_folder(fn: Function) -> InvocationFolder | None:
    """A new worker's :class:`InvocationFolder` (where it has no private /tmp), or None when it cannot
    be made now: then each invocation's TMPDIR is a new folder in the temp folder."""
    try:
        return InvocationFolder(fn, plan().identity)
    except OSError as e:
        log.warning("%s: cannot make a folder for the invocations' TMPDIRs (%s); each gets a new path", fn.name, e)
        return None


def private_tmp(fn: Function) -> PrivateTmp | None:
    """A new worker's private /tmp, or None where the plan has none (or it cannot be made now)."""
    the_plan = plan()
    if not the_plan.private_tmp:
        return None
    try:
        return PrivateTmp(fn, the_plan.identity)
    except OSError as e:
        log.warning("%s: cannot make a private /tmp (%s); this worker's invocations get their own TMPDIR", fn.name, e)
        return None


def enter(fn: Function, worker_name: str, tmp: PrivateTmp | None, keep: Iterable[int]) -> None:
    """Isolate the calling process (a fresh sandbox) for good; raises OSError or ConfigError.

    Order matters: the descriptors go first (nothing below reaches Redis), the mount needs the
    privileges the switch of identity then gives up, and no_new_privs comes last.
    """
    the_plan = plan()
    close_inherited(keep)
    if tmp is not None:
        mount_private_tmp(the_plan.private_tmp, tmp.host, needed_paths(the_plan.settings))
    tmpdir = SANDBOX_TMP if tmp is not None else tempfile.gettempdir()
    apply(sandbox_environment(fn, the_plan.settings.config, worker_name, tmpdir))
    become(the_plan.identity)
