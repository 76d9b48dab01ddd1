"""The function registry, loaded from ``lambdalite.toml`` and validated once at start-up.

An invalid file raises :class:`ConfigError` naming the file, the function and the key, so every
process (and ``lambdalite``) can report it in one line.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker import schedule_expression
from broker.envelope import dump_json
from broker.environment import FromEnv, check_names
from broker.errors import ConfigError, UnknownFunctionError

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # Lambda's own rule for function names
PYTHON_HANDLER = r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$"  # module.attribute
#: Lambda's OS-only runtimes: the function's code is a runtime (its ``bootstrap``) that speaks the Runtime API.
PROVIDED_RUNTIMES = ("provided", "provided.al2", "provided.al2023")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The event types a files trigger may name, as in S3's notification configuration.
FILES_EVENT_TYPES = (
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
)


class FilesTrigger(_Strict):
    """A bucket folder: S3-style ``ObjectCreated`` / ``ObjectRemoved`` events.

    ``prefix`` and ``suffix`` filter on the object key (not URL-encoded), as S3's filter rules do.
    """

    source: Literal["files"]
    bucket: str = Field(pattern=r"^[^/\\.][^/\\]*$")
    events: tuple[str, ...] = Field(("s3:ObjectCreated:*",), min_length=1)
    prefix: str = ""
    suffix: str = ""

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: tuple[str, ...]) -> tuple[str, ...]:
        for name in events:
            if name not in FILES_EVENT_TYPES:
                raise ValueError(f"unknown event type {name!r} (one of: {', '.join(FILES_EVENT_TYPES)})")
        return events


class SqliteTrigger(_Strict):
    """A SQLite table: DynamoDB-Streams-style batches of row changes."""

    source: Literal["sqlite"]
    database: Path
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batch_size: int = Field(100, ge=1, le=10_000)
    batching_window: float = Field(0.0, ge=0, le=300)
    view: Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"] = "NEW_AND_OLD_IMAGES"


class HttpTrigger(_Strict):
    """An HTTP route: API-Gateway-style events."""

    source: Literal["http"]
    path: str = Field(pattern=r"^/")
    methods: tuple[str, ...] = ("POST",)
    mode: Literal["sync", "async"] = "sync"
    auth: Literal["none", "bearer", "github", "stripe", "standard-webhooks"] = "none"
    secret_env: str | None = None


class ScheduleTrigger(_Strict):
    """An EventBridge schedule: ``rate(...)`` or ``cron(...)`` in EventBridge's syntax, ticked by the
    scaler exactly once per tick (:mod:`broker.schedules`).

    ``input`` is a constant JSON event sent instead of the scheduled-rule event; ``catch_up`` says
    what happens to ticks missed while no scaler ran: ``"none"`` (as EventBridge) or ``"latest"``
    (the most recent one runs, if younger than the function's ``maximum_event_age``).
    """

    source: Literal["schedule"]
    expression: str
    timezone: str = "UTC"
    input: Any = None
    catch_up: Literal["none", "latest"] = "none"

    @field_validator("expression")
    @classmethod
    def _expression(cls, text: str) -> str:
        schedule_expression.parse(text)
        return text.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        schedule_expression.zone(name)
        return name

    @field_validator("input")
    @classmethod
    def _json(cls, value: Any) -> Any:
        try:
            dump_json(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"not JSON: {e}") from e
        return value


Trigger = Annotated[FilesTrigger | SqliteTrigger | HttpTrigger | ScheduleTrigger, Field(discriminator="source")]


class Function(_Strict):
    """One function: what runs, under which limits, and what triggers it. Defaults follow Lambda."""

    name: str = Field(pattern=FUNCTION_NAME)
    handler: str | None = Field(None, pattern=r"^\S{1,128}$")
    command: tuple[str, ...] | None = Field(None, min_length=1)
    runtime: Literal["provided", "provided.al2", "provided.al2023"] | None = Field(
        None, description="An OS-only runtime: ``bootstrap`` is started once and asks for events over the Runtime API.",
    )
    bootstrap: str | None = Field(
        None, min_length=1, description="The runtime's executable, relative to the folder of lambdalite.toml.",
    )
    timeout: float = Field(3.0, gt=0, le=900)
    memory: int = Field(128, ge=16, le=10_240)
    ephemeral_storage: int = Field(512, ge=1, le=10_240)
    max_concurrency: int | None = Field(None, ge=1)
    min_workers: int = Field(0, ge=0)
    idle_timeout: float | None = Field(None, gt=0)
    retries: int = Field(2, ge=0, le=100)
    retry_backoff: float = Field(1.0, ge=0, description="Seconds before the first retry; doubles after.")
    maximum_event_age: float = Field(21_600.0, gt=0, description="Older events are dead-lettered.")
    on_success: str | None = Field(None, pattern=FUNCTION_NAME)
    on_failure: str | None = Field(None, pattern=FUNCTION_NAME)
    triggers: tuple[Trigger, ...] = ()
    environment: dict[str, str | FromEnv] = Field(
        default_factory=dict,
        description="Variables set before the handler is imported (Lambda's Environment.Variables).",
    )
    log_format: Literal["Text", "JSON"] = Field(
        "Text", description="Lambda's LoggingConfig.LogFormat: JSON turns logging records and START/END/REPORT "
        "into JSON objects.",
    )

    @field_validator("environment")
    @classmethod
    def _allowed_names(cls, variables: dict[str, str | FromEnv]) -> dict[str, str | FromEnv]:
        check_names(variables)
        return variables

    @model_validator(mode="after")
    def _one_entry_point(self) -> Function:
        if self.runtime is not None:
            if self.bootstrap is None:
                raise ValueError(f"runtime {self.runtime!r} needs a 'bootstrap' (the runtime's executable)")
            if self.command is not None:
                raise ValueError(f"give 'bootstrap', not 'command', for runtime {self.runtime!r}")
        elif self.bootstrap is not None:
            raise ValueError("'bootstrap' needs runtime = \"provided\"")
        elif (self.handler is None) == (self.command is None):
            raise ValueError("give exactly one of 'handler' or 'command'")
        elif self.handler is not None and not re.fullmatch(PYTHON_HANDLER, self.handler):
            raise ValueError(f"handler: {self.handler!r} is not a Python handler ('module.function')")
        if self.max_concurrency is not None and self.min_workers > self.max_concurrency:
            raise ValueError("'min_workers' is larger than 'max_concurrency'")
        return self

    @property
    def python(self) -> bool:
        """Whether this function is a Python ``handler`` that its sandbox imports."""
        return self.handler is not None and self.runtime is None

    @property
    def provided(self) -> bool:
        """Whether this function's code is a runtime (``bootstrap``) served the Runtime API."""
        return self.runtime is not None

    def bootstrap_path(self, config: Path) -> Path:
        """The runtime's executable: ``bootstrap`` relative to the folder of ``config`` (LAMBDA_TASK_ROOT)."""
        if self.bootstrap is None:
            raise ConfigError(f"function {self.name!r} has no bootstrap")
        return config.resolve().parent / self.bootstrap

    def concurrency(self, global_cap: int) -> int:
        """The most workers this function may have at once."""
        return min(self.max_concurrency or global_cap, global_cap)


class Registry:
    """The functions of one ``lambdalite.toml``, by name.

    ``revision`` is the running revision it was read as (:mod:`broker.revision`), None for a file
    read on its own. :meth:`replace` swaps in another revision's functions in place, so whatever
    holds this object (a publisher, the HTTP source) sees them at once.
    """

    def __init__(self, functions: dict[str, Function], path: Path, revision: Any = None) -> None:
        self.functions = functions
        self.path = path
        self.revision = revision

    def replace(self, other: Registry) -> None:
        """Take ``other``'s functions and revision (each one assignment: readers see old or new)."""
        self.functions = other.functions
        self.revision = other.revision

    def __iter__(self) -> Iterator[Function]:
        return iter(self.functions.values())

    def __contains__(self, name: object) -> bool:
        return name in self.functions

    def get(self, name: str) -> Function:
        """The function called ``name``; raises :class:`UnknownFunctionError`."""
        try:
            return self.functions[name]
        except KeyError:
            running = f" (running revision {self.revision.number})" if self.revision is not None else ""
            raise UnknownFunctionError(f"no function named {name!r} in {self.path}{running}") from None

    def triggers(self, source: str) -> Iterator[tuple[Function, Any]]:
        """Every (function, trigger) pair whose trigger has the given ``source``."""
        for fn in self:
            for trigger in fn.triggers:
                if trigger.source == source:
                    yield fn, trigger


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("files", "sqlite", "http", "schedule") and out.endswith("]"):
            continue  # pydantic's discriminator tag: not a key the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(path: Path, name: str, e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        key = _where(err["loc"]) or "(function)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if err["loc"] else msg)
    return f"{path}: function {name!r}: " + "; ".join(problems)


def read_config(path: Path) -> bytes:
    """The bytes of ``path``; raises :class:`ConfigError` with one readable line."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (set LAMBDALITE_CONFIG to use another)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e


def load_registry(path: Path) -> Registry:
    """Read and validate ``path``; raises :class:`ConfigError` with one readable line."""
    return parse_registry(read_config(path), path)


def parse_registry(raw: bytes, path: Path) -> Registry:
    """Validate the text of a ``lambdalite.toml`` (``path`` names it in errors and anchors its
    relative paths); raises :class:`ConfigError` with one readable line."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    unknown = sorted(set(data) - {"functions"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r} (expected [functions.NAME])")
    tables = data.get("functions", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: 'functions' must be a table of [functions.NAME] tables")
    functions: dict[str, Function] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: function {name!r}: must be a table")
        try:
            functions[name] = Function(name=name, **table)
        except ValidationError as e:
            raise ConfigError(_describe(path, name, e)) from e
        except TypeError as e:  # a key that collides with 'name'
            raise ConfigError(f"{path}: function {name!r}: {e}") from e
    for fn in functions.values():
        for key in ("on_success", "on_failure"):
            target = getattr(fn, key)
            if target is not None and target not in functions:
                raise ConfigError(f"{path}: function {fn.name!r}: {key}: no function named {target!r}")
    return Registry(functions, path)


def resolve_handler(fn: Function, registry_path: Path | None = None) -> Callable[[Any, Any], Any]:
    """Import ``fn.handler`` and return the callable; raises :class:`ConfigError` if it does not import.

    The folder holding the registry file goes on ``sys.path`` first, so a project's own
    ``handlers/`` package resolves without being installed.
    """
    if fn.handler is None or not fn.python:
        raise ConfigError(f"function {fn.name!r} runs a command or a runtime, not a Python handler")
    if registry_path is not None:
        root = str(registry_path.resolve().parent)
        if root not in sys.path:
            sys.path.insert(0, root)
    module_name, _, attr = fn.handler.rpartition(".")
    where = f"{registry_path or 'lambdalite.toml'}: function {fn.name!r}: handler"
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure of user code is a config problem
        raise ConfigError(f"{where}: cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ConfigError(f"{where}: {module_name!r} has no callable {attr!r}")
    return handler  # type: ignore[no-any-return]
