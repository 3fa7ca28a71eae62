"""Runtime configuration from the environment (never from the desired-state YAML).

HERALD_STATE_URL     state store: sqlite:///PATH (default .herald/state.db) or postgresql://...
HERALD_AUDIENCE_URL  user/event store: duckdb:///PATH (default .herald/audience.duckdb) or postgresql://...
HERALD_ADMIN_TOKEN   bearer token for state-changing HTTP endpoints
HERALD_PROVIDER_BASE_URL  when set, every provider adapter talks to {this}/{provider type} (mock server)
HERALD_PUBLIC_URL    where providers reach this daemon (https://herald.example): every send asks for a
                     status callback to {this}/receipts/{provider}, and signatures are checked against it
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_STATE_URL = "sqlite:///.herald/state.db"
DEFAULT_AUDIENCE_URL = "duckdb:///.herald/audience.duckdb"


@dataclass(frozen=True)
class RuntimeConfig:
    state_url: str = DEFAULT_STATE_URL
    audience_url: str = DEFAULT_AUDIENCE_URL
    admin_token: str | None = None
    provider_base_url: str | None = None
    public_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if environ is None else environ
        return cls(
            state_url=env.get("HERALD_STATE_URL", DEFAULT_STATE_URL),
            audience_url=env.get("HERALD_AUDIENCE_URL", DEFAULT_AUDIENCE_URL),
            admin_token=env.get("HERALD_ADMIN_TOKEN") or None,
            provider_base_url=env.get("HERALD_PROVIDER_BASE_URL") or None,
            public_url=(env.get("HERALD_PUBLIC_URL") or "").rstrip("/") or None,
        )
