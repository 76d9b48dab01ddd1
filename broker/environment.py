"""The environment a handler sees: Lambda's runtime variables, the function's own ``environment``,
and the identity it runs as.

Lambda sets a fixed list of variables in every execution environment (``AWS_REGION``,
``AWS_LAMBDA_FUNCTION_NAME``, ``_HANDLER``, ...) and refuses them as names of a function's own
``Environment.Variables``; lambdalite does the same, with one region setting
(``LAMBDALITE_REGION``) for the variables, the context's ARNs and the event records alike. A
function's ``environment`` table in ``lambdalite.toml`` holds plain strings or
``{ from_env = "NAME" }``, a value taken from the stack's own environment (a secret kept out of the
file). Values are set before the handler module is imported.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pwd
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from broker.errors import ConfigError, SandboxIdentityError, SettingsError
from broker.kernel import try_in_child

if TYPE_CHECKING:
    from broker.registry import Function
    from broker.settings import Settings

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"

#: Names Lambda reserves for its runtime (its docs' "reserved environment variables"), plus TMPDIR,
#: which lambdalite points at the function's private /tmp.
RESERVED = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TMPDIR",
})
#: Lambda's rule for a variable's name.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
#: The stack's own settings (tokens, keys) never reach a handler.
STACK_PREFIX = "LAMBDALITE_"


class FromEnv(BaseModel):
    """``{ from_env = "NAME" }``: the value of the stack's environment variable NAME."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_names(variables: Mapping[str, object]) -> None:
    """Raise ValueError naming the first key Lambda would refuse (reserved, or not a valid name)."""
    import re

    for key in variables:
        if key in RESERVED:
            raise ValueError(f"{key!r} is reserved by the Lambda runtime and cannot be set")
        if key.startswith(STACK_PREFIX):
            raise ValueError(f"{key!r}: names starting with {STACK_PREFIX} belong to the stack's own settings")
        if not re.fullmatch(NAME_PATTERN, key):
            raise ValueError(f"{key!r} is not a valid variable name (a letter, then letters, digits or _)")


@functools.cache
def region() -> str:
    """``LAMBDALITE_REGION`` (default us-east-1): the region of every ARN, record and variable."""
    from broker.settings import load_settings

    try:
        return load_settings().region
    except SettingsError:
        return os.environ.get("LAMBDALITE_REGION") or DEFAULT_REGION


@functools.cache
def account() -> str:
    """``LAMBDALITE_ACCOUNT_ID`` (default 000000000000): the account of every ARN, record and event."""
    from broker.settings import load_settings

    try:
        return load_settings().account_id
    except SettingsError:
        return os.environ.get("LAMBDALITE_ACCOUNT_ID") or DEFAULT_ACCOUNT


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{region()}:{account()}:function:{name}"


def log_stream_name(worker_name: str, at: float | None = None) -> str:
    return f"{time.strftime('%Y/%m/%d', time.gmtime(at))}/[$LATEST]{worker_name}"


def function_variables(fn: Function, config: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The function's ``environment`` with every ``from_env`` read from ``environ`` (the stack's);
    raises :class:`ConfigError` naming file, function and key for a variable that is not set."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for key, value in fn.environment.items():
        if isinstance(value, FromEnv):
            if value.from_env not in environ:
                raise ConfigError(f"{config}: function {fn.name!r}: environment.{key}: from_env "
                                  f"{value.from_env!r} is not set in the stack's environment")
            out[key] = environ[value.from_env]
        else:
            out[key] = value
    return out


def runtime_variables(fn: Function, config: Path, worker_name: str, tmpdir: str) -> dict[str, str]:
    """Lambda's runtime variables for ``fn``'s execution environment, as its docs name them."""
    the_region = region()
    out = {
        "AWS_REGION": the_region,
        "AWS_DEFAULT_REGION": the_region,
        "AWS_LAMBDA_FUNCTION_NAME": fn.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(worker_name),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "provisioned-concurrency" if fn.min_workers else "on-demand",
        "_HANDLER": fn.handler or " ".join(fn.command or ()),
        "LAMBDA_TASK_ROOT": str(config.resolve().parent),
        "LAMBDA_RUNTIME_DIR": sys.prefix,
        "TZ": ":UTC",
        "TMPDIR": tmpdir,
    }
    if fn.python:  # what Powertools and the SDKs read to tell the runtime
        out["AWS_EXECUTION_ENV"] = f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}"
    return out


def sandbox_environment(fn: Function, config: Path, worker_name: str, tmpdir: str,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of ``fn``'s sandbox: the stack's own, without its ``LAMBDALITE_*``
    settings, then the function's ``environment``, then Lambda's runtime variables."""
    environ = os.environ if environ is None else environ
    base = {k: v for k, v in environ.items() if not k.startswith(STACK_PREFIX)}
    return {**base, **function_variables(fn, config, environ), **runtime_variables(fn, config, worker_name, tmpdir)}


def apply(variables: Mapping[str, str]) -> None:
    """Make ``variables`` this process's whole environment (``os.environ``, TZ and tempfile read again)."""
    import tempfile

    os.environ.clear()
    os.environ.update(variables)
    time.tzset()
    tempfile.tempdir = None


@dataclass(frozen=True, slots=True)
class Identity:
    """The unprivileged user a sandbox switches to."""

    name: str
    uid: int
    gid: int


def sandbox_identity(settings: Settings) -> Identity | None:
    """Whom handlers run as: ``LAMBDALITE_SANDBOX_USER`` when the stack runs as root, None when it
    does not (no switch is possible) or when that setting names root itself. Raises
    :class:`SandboxIdentityError` for a user the system does not know."""
    if os.geteuid() != 0:
        return None
    user = settings.sandbox_user
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        if user.isdigit():
            return Identity(user, int(user), int(user))  # a bare uid with no passwd entry: its own gid
        raise SandboxIdentityError(f"LAMBDALITE_SANDBOX_USER: no user named {user!r} on this machine") from None
    if entry.pw_uid == 0:
        return None
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid)


_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def no_new_privs() -> None:
    """Nothing this process executes can gain privileges (setuid binaries, file capabilities)."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def close_inherited(keep: Iterable[int]) -> None:
    """Point every descriptor this process inherited, other than ``keep``, at /dev/null: a Redis
    connection, a listening socket or a lock file of the parent stays open as a number (the
    objects that own it may still close it) but reaches nothing."""
    kept = set(keep)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    kept.add(null)
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd in kept:
            continue
        try:
            os.fstat(fd)
            os.dup2(null, fd, inheritable=False)
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
    os.close(null)


def become(identity: Identity | None) -> None:
    """Switch this process to ``identity`` for good (groups, gid, uid: root's capabilities go with
    the uid), then set no_new_privs. With None only no_new_privs is set."""
    if identity is not None:
        os.setgroups([])
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    no_new_privs()


def check_handlers(functions: Iterable[Function], settings: Settings) -> None:
    """Import every Python handler as its sandbox will: in a child process with the function's
    environment, switched to the sandbox identity. Raises :class:`ConfigError` (one line naming
    file, function and the import's error) for the first that fails; nothing of the handlers'
    runs in this process."""
    import tempfile

    from broker.registry import resolve_handler

    identity = sandbox_identity(settings)
    who = (f" (imported as {identity.name}, LAMBDALITE_SANDBOX_USER: can that user read the project?)"
           if identity else "")
    for fn in functions:
        if not fn.python and not fn.provided:
            continue
        variables = sandbox_environment(fn, settings.config, "check", tempfile.gettempdir())  # ConfigError

        def imported(report: int, fn: Function = fn, variables: dict[str, str] = variables) -> None:
            close_inherited(keep=(0, 1, 2, report))
            apply(variables)
            become(identity)
            if fn.provided:
                check_bootstrap(fn, settings.config)
            else:
                resolve_handler(fn, settings.config)

        problem = try_in_child(imported, lambda e: str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}")
        if problem:
            raise ConfigError(problem + who)


def check_bootstrap(fn: Function, config: Path) -> None:
    """Raise :class:`ConfigError` unless ``fn``'s bootstrap is a file this process may execute."""
    path = fn.bootstrap_path(config)
    where = f"{config}: function {fn.name!r}: bootstrap"
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a file")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"{where}: {path} is not executable (chmod +x)")
