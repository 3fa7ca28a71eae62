"""`kind: ProviderGroup` — providers in priority order with failover, optionally per country."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import CountryCode, DocumentBase, StrictModel

MAX_PROVIDERS_PER_GROUP = 10


class CircuitBreaker(StrictModel):
    failureThreshold: int = Field(default=5, ge=1, le=1000, description="Consecutive failures that open the circuit.")
    cooldownSeconds: float = Field(default=30.0, gt=0, le=3600, description="Time before a half-open probe.")


class ProviderGroupSpec(StrictModel):
    providers: list[str] = Field(
        min_length=1, max_length=MAX_PROVIDERS_PER_GROUP, description=f"Provider names in priority order (at most {MAX_PROVIDERS_PER_GROUP})."
    )
    countries: list[CountryCode] = Field(default_factory=list, description="Route numbers of these countries here.")
    default: bool = Field(default=False, description="Used for numbers no country group claims. At most one.")
    circuitBreaker: CircuitBreaker = Field(default_factory=CircuitBreaker)


class ProviderGroup(DocumentBase):
    kind: Literal["ProviderGroup"]
    spec: ProviderGroupSpec
