"""`kind: ProviderGroup` — providers in priority order with failover, optionally per country."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import CountryCode, DocumentBase, StrictModel

MAX_PROVIDERS_PER_GROUP = 10
InDoubtPolicy = Literal["skip", "resend", "failover"]


class CircuitBreaker(StrictModel):
    failureThreshold: int = Field(default=5, ge=1, le=1000, description="Consecutive failures that open the circuit.")
    cooldownSeconds: float = Field(default=30.0, gt=0, le=3600, description="Time before a half-open probe.")


class ProviderGroupSpec(StrictModel):
    providers: list[str] = Field(
        json_schema_extra={"uniqueItems": True},  # herald validate: "listed twice"
        min_length=1, max_length=MAX_PROVIDERS_PER_GROUP, description=f"Provider names in priority order (at most {MAX_PROVIDERS_PER_GROUP})."
    )
    countries: list[CountryCode] = Field(default_factory=list, description="Route numbers of these countries here.",
                                         json_schema_extra={"uniqueItems": True})  # herald validate: routed once
    default: bool = Field(default=False, description="Used for numbers no country group claims. At most one.")
    circuitBreaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    inDoubt: InDoubtPolicy = Field(
        default="skip",
        description="What to do with a message whose send is in doubt (the provider may have accepted it: "
                    "timeout after the request was written, 500/502/504, a crash between send and record) "
                    "at a provider that offers no message lookup. skip: record it skipped with the reason, "
                    "never a duplicate (default); resend: send again, same provider first (a duplicate "
                    "when the first send got through); failover: send through the group's other "
                    "providers. Providers with a lookup (twilio) are always asked first.")


class ProviderGroup(DocumentBase):
    kind: Literal["ProviderGroup"]
    spec: ProviderGroupSpec
