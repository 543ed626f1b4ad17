"""Settings: everything the control plane reads from its environment (prefix VDI_)."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_CHARS = 32
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def settings_reference() -> str:
    """The settings as a Markdown table (docs/configuration.md is this, so it cannot drift)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "unset"
            if default is None
            else "empty"
            if default == ""
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `VDI_{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VDI_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="Postgres URL (postgresql://...). Unset: an embedded Postgres in VDI_DATA_DIR.",
    )
    data_dir: Path = Field(
        default=Path(".vdi-data"),
        description="The embedded Postgres, generated dev keys, local desktops' homes and the "
        "in-process API's kubeconfig",
    )
    auto_migrate: bool | None = Field(
        default=None,
        description="Upgrade the schema at start-up. Default: true for the embedded database.",
    )
    cluster: Literal["auto", "kubernetes", "local", "simulated"] = Field(
        default="auto",
        description="`kubernetes` (in-cluster config or a kubeconfig), `local` (each session's "
        "pod run as processes on this machine: Xvfb, vdi-agent, Selkies 2.x), `simulated` (a "
        "fake cluster with a stand-in agent); `auto`: a cluster when configured, else local "
        "when Xvfb and Selkies are installed, else simulated",
    )
    local_address: str = Field(
        default="127.0.0.1",
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$",
        description="Local desktops: the address their Selkies listens on and their `url` "
        "names (loopback by default; this machine's LAN address or name to serve others)",
    )
    local_selkies: str | None = Field(
        default=None,
        description="Local desktops: the `selkies` command (Selkies 2.x); default the one "
        "beside this Python (`pip install 'vdi-control[desktop]'`), else on PATH",
    )
    local_isolation: Literal["auto", "sandbox", "none"] = Field(
        default="auto",
        description="Local desktops: `sandbox` runs each user's desktop as an account of "
        "their own in a bubblewrap sandbox (needs root and `bwrap`); `none` runs every desktop "
        "as the server's account (single-user); `auto`: sandbox where possible, else "
        "single-user, said loudly",
    )
    local_uid_base: int = Field(
        default=2_000_000,
        ge=1000,
        le=4_000_000_000,
        description="Local desktops, sandboxed: the first uid given to a user's account (one "
        "per user, upward); choose a range no real account or subordinate-id range uses",
    )
    namespace: str = Field(
        default="vdi",
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="The Kubernetes namespace the sessions run in",
    )
    base_domain: str = Field(
        default="vdi.example.com",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z][-a-z0-9]*[a-z0-9]$",
        description="Each session is served at `https://<user>.<base domain>/`",
    )
    callback_url: str = Field(
        default="http://vdi-control.vdi-system.svc:8080",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The control plane's base URL as seen from session pods.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Server key (at least 32 characters): agent tokens (HMAC) and encryption "
        "at rest (Fernet, HKDF-derived). Required with VDI_DATABASE_URL; otherwise generated "
        "into the data dir",
    )
    turn_host: str | None = Field(default=None, description="TURN/STUN host; default base_domain")
    turn_hosts: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9.,: -]*$",
        description="Several coturn replicas, one host name each, comma-separated: a session "
        "uses one of them (chosen by its id) for its viewers and its Selkies alike, so the two "
        "meet relay to relay on one coturn. Empty: VDI_TURN_HOST alone.",
    )
    turn_rate_limit: str = Field(
        default="10/minute",
        pattern=r"^[0-9]+ ?(/|per) ?([0-9]+ )?(second|minute|hour)s?$",
        description="TURN credentials a session's agent may fetch per replica (GET "
        "/v1/sessions/{id}/turn, a moving window); more get 429 with Retry-After. The agent "
        "renews at a third of VDI_TURN_CREDENTIAL_TTL_S.",
    )
    turn_port: int = Field(default=3478, ge=1, le=65535, description="TURN/STUN port (UDP)")
    turn_secret: SecretStr | None = Field(
        default=None,
        description="coturn's static-auth-secret (use-auth-secret), which TURN credentials "
        "are signed with. Required with VDI_DATABASE_URL; otherwise generated into the data dir",
    )
    turn_credential_ttl_s: int = Field(
        default=900,
        ge=60,
        le=86400,
        description="How long a TURN credential handed out works for new allocations (coturn "
        "checks it when a relay is allocated; a relay in use stays up). The agent renews the "
        "pod's at a third of it while the session lives, so it stops working this long after "
        "the session ends.",
    )
    bootstrap_token: SecretStr | None = Field(
        default=None,
        description="An admin token accepted from start-up (at least 32 characters). Only the "
        "current value works: changing it revokes the earlier values, unsetting it revokes them "
        "all, a value that comes back (a rollback) works again; an admin's revocation sticks",
    )
    bootstrap_generation: int | None = Field(
        default=None,
        ge=0,
        description="Orders configurations for VDI_BOOTSTRAP_TOKEN (the chart sets the Helm "
        "release revision): a replica of an older one changes no bootstrap token. Unset: the "
        "last replica to start decides.",
    )
    reserved_user_names: str = Field(
        default="api,turn,turns,stun,www,admin,traefik,vdi,vdi-control,vdi-api,dashboard,"
        "metrics,auth,login,mail,smtp,ns,ns1,ns2,localhost,wpad,autoconfig,autodiscover",
        description="Comma-separated names no user may have: each user's desktop is served at "
        "`<user>.<base domain>`, so these would shadow the platform's own hosts. The first label "
        "of the TURN host and the callback host, when under the base domain, are added.",
    )
    cors_origins: str = Field(
        default="",
        pattern=r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)?(,https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)*$",
        description="Comma-separated origins (`https://portal.example.com`) whose pages may call "
        "the API from a browser (CORS, without credentials: send a token scoped for that "
        "application). Empty: none. No wildcard; never the agents' callbacks",
    )
    ingress_api_version: Literal["traefik.io/v1alpha1", "traefik.containo.us/v1alpha1"] = Field(
        default="traefik.io/v1alpha1",
        description="Traefik v3 (traefik.io) or v2 (traefik.containo.us) IngressRoute API",
    )
    tls_secret_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="TLS secret of the session IngressRoutes (a wildcard certificate); "
        "unset: Traefik's default TLS store",
    )
    image_pull_secret: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The pull secret of session pods (in the sessions namespace)",
    )
    heartbeat_timeout_s: int = Field(
        default=120,
        ge=10,
        description="A Running session whose agent is silent this long: AGENT_LOST",
    )
    report_interval_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="How often an agent reports when nothing changes; the server tells the "
        "agent with each answer (header `VDI-Report-Interval`), capped at a third of "
        "VDI_HEARTBEAT_TIMEOUT_S so that two lost reports never fail a session",
    )
    failed_grace_s: int = Field(
        default=600, ge=0, description="Failed sessions are cleaned up after this (for inspection)"
    )
    reconcile_lease_s: int = Field(
        default=60,
        ge=5,
        description="A claimed session is due again after this if its replica dies",
    )
    reconcile_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often an idle reconciler looks for due work"
    )
    reconcile_concurrency: int = Field(
        default=16, ge=1, le=256, description="Sessions one replica works on at once"
    )
    orphan_sweep_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often objects of no live session are swept (one replica at a time), "
        "and pre-pull DaemonSets checked when no template changed",
    )
    pool_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Warm pool members one replica provisions at once: the rest of "
        "VDI_RECONCILE_CONCURRENCY stays for users' sessions, which are always claimed first",
    )
    pool_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="How often the warm pools and pre-pulls are checked"
    )
    reconciler: bool = Field(default=True, description="Run the reconciler in this replica")
    simulated_gpus: int = Field(default=8, ge=0, description="GPUs of the simulated cluster's node")
    max_sessions_per_user: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Live sessions per user (Pending to Running, and Failed ones still holding "
        "their pod); more is a 409 naming them",
    )
    max_body_bytes: int = Field(default=65536, ge=1024, description="Larger request bodies get 413")
    max_streams_per_token: int = Field(
        default=50, ge=1, description="Event streams one token may hold open on a replica"
    )
    max_streams_per_replica: int = Field(
        default=5000, ge=1, description="Event streams a replica serves at once"
    )
    report_rate_limit: str = Field(
        default="30/minute",
        pattern=r"^[0-9]+ ?(/|per) ?([0-9]+ )?(second|minute|hour)s?$",
        description="Agent reports accepted per session and replica (a moving window, e.g. "
        "`30/minute`); more get 429 with Retry-After. The agent sends one per change and one "
        "every VDI_REPORT_INTERVAL_S.",
    )
    idempotency_ttl_s: int = Field(
        default=86400,
        ge=60,
        description="How long an `Idempotency-Key` replays its first result",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="The logs' level (the embedded Postgres' own chatter is kept to warnings)",
    )
    log_json: bool | None = Field(
        default=None,
        description="JSON log lines; unset: JSON unless stderr is a terminal (then readable "
        "lines for a person)",
    )
    host: str = Field(default="127.0.0.1", description="The address `serve` listens on")
    port: int = Field(
        default=8080, ge=1, le=65535, description="The API's port (`serve --port` overrides)"
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=1,
        le=600,
        description="On SIGTERM, how long open requests (event streams included) have to end "
        "before the server closes them; the chart's terminationGracePeriodSeconds covers it",
    )
    audit_webhook_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Where each audit record is POSTed as it is stored (at least once, in order "
        "per session, retried with backoff across restarts; dedupe by its `id`), signed with "
        "VDI_AUDIT_WEBHOOK_SECRET: header `VDI-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "
        '"<t>.<body>">`. Unset: records are only kept (GET /v1/audit)',
    )
    audit_webhook_secret: SecretStr | None = Field(
        default=None,
        description="The key the audit webhook's deliveries are signed with (required with "
        "VDI_AUDIT_WEBHOOK_URL); the receiver checks each signature with it",
    )
    audit_webhook_timeout_s: float = Field(
        default=10.0, ge=0.5, le=120, description="How long one audit delivery may take"
    )
    agent_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="A second listener, for the agents' callbacks only (their health reports, "
        "TURN renewals, access documents and desktop audit events; every other path is 404 "
        "there), so session pods can be allowed to "
        "reach it and nothing else of the API. 0: none (the chart sets 8081).",
    )

    @field_validator("secret_key", "turn_secret", "bootstrap_token", "audit_webhook_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_SECRET_CHARS} characters "
                "(generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return value

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def should_auto_migrate(self) -> bool:
        return self.embedded_database if self.auto_migrate is None else self.auto_migrate

    @property
    def effective_report_interval_s(self) -> int:
        return max(1, min(self.report_interval_s, self.heartbeat_timeout_s // 3))

    @property
    def reserved_users(self) -> frozenset[str]:
        names = {n.strip().lower() for n in self.reserved_user_names.split(",") if n.strip()}
        callback_host = self.callback_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        for host in (*self.turn_host_list, callback_host):
            if host.endswith("." + self.base_domain):
                names.add(host[: -len(self.base_domain) - 1].split(".")[-1])
        return frozenset(names)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin for origin in self.cors_origins.split(",") if origin]

    @property
    def turn_enabled(self) -> bool:
        """Sessions relay through TURN: always on Kubernetes; local desktops only when a TURN
        host is set (on this machine's own addresses a viewer needs no relay)."""
        return self.cluster != "local" or self.turn_host is not None

    @property
    def effective_turn_host(self) -> str:
        return self.turn_host or self.base_domain

    @property
    def turn_host_list(self) -> tuple[str, ...]:
        hosts = tuple(h.strip() for h in self.turn_hosts.split(",") if h.strip())
        return hosts or (self.effective_turn_host,)

    def turn_host_for(self, session_id: uuid.UUID) -> str:
        """The coturn replica a session relays through: the same for its viewers and its
        Selkies, and stable for its life (by its id)."""
        hosts = self.turn_host_list
        return hosts[session_id.int % len(hosts)]

    def require_secret_key(self) -> str:
        if self.secret_key is None:
            raise ConfigError("VDI_SECRET_KEY is not set")
        return self.secret_key.get_secret_value()

    def require_turn_secret(self) -> str:
        if self.turn_secret is None:
            raise ConfigError("VDI_TURN_SECRET is not set")
        return self.turn_secret.get_secret_value()

    @model_validator(mode="after")
    def _audit_webhook_signed(self) -> Settings:
        if self.audit_webhook_url and self.audit_webhook_secret is None:
            raise ValueError(
                "VDI_AUDIT_WEBHOOK_URL needs VDI_AUDIT_WEBHOOK_SECRET, the key its deliveries "
                "are signed with (generate one with: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            )
        return self


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = "VDI_" + "_".join(str(part) for part in item["loc"]).upper()
        # Never echo the value: it may be a secret.
        lines.append(f"{name}: {item['msg']}")
    return "; ".join(lines)


def _local_secret(data_dir: Path, name: str) -> SecretStr:
    """A secret generated once and kept in the data directory (embedded/dev mode only)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return SecretStr(path.read_text().strip())


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad or missing setting raises ConfigError naming the variable.

    With the embedded database (a developer's machine), missing keys are generated once and
    kept in VDI_DATA_DIR; with a real database they must be given.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    missing = [
        name
        for name, value in (
            ("secret_key", settings.secret_key),
            ("turn_secret", settings.turn_secret),
        )
        if value is None
    ]
    if missing and not settings.embedded_database:
        names = ", ".join(f"VDI_{name.upper()}" for name in missing)
        raise ConfigError(
            f"{names} must be set when VDI_DATABASE_URL is set "
            f"(at least {MIN_SECRET_CHARS} characters each)"
        )
    if missing:
        generated = {name: _local_secret(settings.data_dir, name) for name in missing}
        settings = settings.model_copy(update=generated)
    return settings
