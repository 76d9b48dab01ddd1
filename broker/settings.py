"""The one settings object: environment variables prefixed ``LAMBDALITE_`` and a ``.env`` file.

Every setting has a default that works on a fresh machine. Durations are in seconds.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from broker.errors import SettingsError
from broker.redis_url import sentinel_target


def _default_max_workers() -> int:
    # Handlers often wait on I/O, so several per core; the memory budget guards the machine.
    return max(16, 4 * (os.cpu_count() or 1))


class _PrefixedDotEnv(DotEnvSettingsSource):
    """A ``.env`` source that sees only ``LAMBDALITE_*`` entries: other programs' keep their own."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = self._apply_case_sensitive(self.env_prefix)
        return {k: v for k, v in super()._load_env_vars().items() if k.startswith(prefix)}


class Settings(BaseSettings):
    """Process-wide settings; validated once at start-up by :func:`load_settings`."""

    # extra="forbid" rejects a misspelt LAMBDALITE_* variable in .env; variables of other
    # programs in the same .env are ignored because they lack the prefix.
    model_config = SettingsConfigDict(
        env_prefix="LAMBDALITE_", env_file=".env", extra="forbid", frozen=True
    )

    config: Path = Field(Path("lambdalite.toml"), description="The function registry file.")
    redis_url: str = Field(
        "", description="Redis to use (redis://, unix:// or redis+sentinel://); empty means the embedded server "
        "on a unix socket under var/."
    )
    var_dir: Path = Field(Path("var"), description="Runtime state: the embedded Redis's socket and AOF.")
    redis_wait_replicas: int = Field(
        0, ge=0, le=16,
        description="Replicas a source's publish waits for (Redis WAIT) before it counts as accepted; 0: none.",
    )
    redis_wait_timeout: float = Field(
        1.0, gt=0, le=60, description="Seconds a publish waits for LAMBDALITE_REDIS_WAIT_REPLICAS replicas.",
    )
    redis_appendfsync: str = Field(
        "everysec", pattern=r"^(everysec|always)$",
        description="When the embedded Redis fsyncs its append-only file: everysec, or always (power-cut safe).",
    )
    buckets: Path = Field(Path("buckets"), description="Each sub-folder is a bucket.")
    region: str = Field("us-east-1", min_length=1, description="The region of every ARN, event record and AWS_REGION.")
    max_workers: int = Field(default_factory=_default_max_workers, ge=1, description="Global worker cap.")
    idle_timeout: float = Field(30.0, gt=0, description="Seconds before an idle worker is retired.")
    memory_budget: int = Field(
        0, ge=0, description="MB the scaler may commit to workers' memory limits; 0 means 90% of RAM."
    )
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    sqlite_poll_interval: float = Field(
        0.01, gt=0, le=5, description="Seconds between the SQLite feed's looks at its change tables."
    )
    http_host: str = Field("127.0.0.1", description="Address the webhook/Invoke API server binds to.")
    http_port: int = Field(9000, ge=0, le=65535, description="Port of the webhook/Invoke API server.")
    http_token: str = Field("", description="When set, the Invoke API needs 'Authorization: Bearer <it>'.")

    # -- Redis's bounds (broker.pruning): how long results are kept, what stores without a TTL keep --
    sync_result_ttl: int = Field(
        600, ge=1, le=7 * 24 * 3600,
        description="Seconds RQ keeps a synchronous invocation's job and result (finished registry).",
    )
    outcome_ttl: int = Field(
        900, ge=1, le=7 * 24 * 3600,
        description="Seconds an event's outcome stays readable (lambdalite:result:<id>).",
    )
    failed_jobs_kept: int = Field(
        1000, ge=0, description="Failed RQ jobs kept per function, newest first (RQ's failed registry).",
    )
    dead_letters_kept: int = Field(
        10000, ge=1, description="Dead letters kept per function; beyond it the oldest are dropped.",
    )
    prune_interval: float = Field(
        15.0, gt=0, le=60, description="Seconds between the scaler's pruning passes over RQ's registries.",
    )

    # -- schedules (broker.schedules) --
    account_id: str = Field(
        "000000000000", pattern=r"^\d{12}$",
        description="The AWS-style account in every ARN, record and event (as LAMBDALITE_REGION is the region).",
    )
    schedule_clock_rate: float = Field(
        1.0, gt=0, le=3600,
        description="Tests only: schedule time runs this many times faster than the clock, from schedule_clock_origin.",
    )
    schedule_clock_origin: float = Field(
        0.0, ge=0, description="Tests only: the instant (seconds since the epoch) a faster schedule clock starts at.",
    )

    # -- sandbox: the identity, environment and /tmp of handlers (broker/environment.py, workers/isolation.py)
    sandbox_user: str = Field(
        "nobody", min_length=1,
        description="The unprivileged user (name or uid) handlers run as when the stack runs as root.",
    )
    private_tmp: bool = Field(
        True,
        description="Give each worker's sandbox a private /tmp (a mount namespace); off: a TMPDIR per invocation.",
    )

    # -- HTTP front door: who may call, which proxies are believed, how long a connection may dawdle --
    access_keys: str = Field(
        "", description="Invoke API access keys checked as SigV4: KEY_ID:SECRET pairs, comma-separated."
    )
    access_keys_file: Path | None = Field(
        None, description="An AWS credentials file whose aws_access_key_id/aws_secret_access_key pairs are accepted."
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or networks whose X-Forwarded-For / X-Real-IP is believed."
    )
    http_header_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds a connection has to send a request's headers."
    )
    http_keepalive_timeout: float = Field(
        5.0, gt=0, le=3600, description="Seconds an idle keep-alive connection stays open."
    )
    http_body_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds a request's body has to arrive after its headers."
    )
    http_max_connections: int = Field(
        1000, ge=1, description="Most open HTTP connections; more are answered 503 and closed."
    )
    http_idle_standby: float = Field(
        60.0, ge=0, le=86400, description="Seconds without a request after which the HTTP server stands by "
        "in a few MB, holding its port; the next connection starts it again. 0: never."
    )

    # -- logs and cost: the log store's bounds (broker/logstore.py)
    logs_max_invocations: int = Field(
        100_000, ge=100, description="Invocations whose log lines are kept per function; the oldest go first.",
    )
    logs_max_invocation_bytes: int = Field(
        16_384, ge=1024, le=1 << 20,
        description="Log text kept per invocation; the middle of a longer output is left out (counted).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _PrefixedDotEnv(settings_cls), file_secret_settings

    @field_validator("redis_url")
    @classmethod
    def _sentinel_url(cls, url: str) -> str:
        sentinel_target(url)  # a malformed redis+sentinel:// URL says what is wrong at start-up
        return url

    @property
    def embedded_redis(self) -> bool:
        """True when lambdalite runs its own redis-server (no ``LAMBDALITE_REDIS_URL``)."""
        return not self.redis_url

    @property
    def redis_socket(self) -> Path:
        """The embedded server's unix socket."""
        return self.var_dir.resolve() / "redis.sock"

    @property
    def redis_dsn(self) -> str:
        """The URL every process connects to."""
        return self.redis_url or f"unix://{self.redis_socket}"


@functools.lru_cache(maxsize=1)
def current() -> Settings:
    """The settings as this process first read them, for code deep in a call chain that is given
    no :class:`Settings` (the lifetimes a publish writes). Raises :class:`SettingsError`."""
    return load_settings()


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raises :class:`SettingsError` with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]).upper()
            key = key if key.startswith("LAMBDALITE_") else "LAMBDALITE_" + key  # .env's extras keep their prefix
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise SettingsError("; ".join(problems)) from e
