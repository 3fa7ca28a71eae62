"""Cross-object checks on the whole desired state: references, uniqueness, cron, zones, templates."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from croniter import croniter

from .diagnostics import Diagnostic, Severity
from .models import Campaign, Provider
from .models.campaign import TimezoneSpec
from .models.provider import GenericHttpSpec, Msg91Spec, TwilioSpec, VonageSpec
from .references import check_references
from .render import template_problems

if TYPE_CHECKING:
    from .loading import DesiredState, LoadedDocument

PER_USER_MARKERS = ("{{", "{%", "$$To", "$$Body", "$$TemplateVariables", "$$MessageID")


def check_state(state: DesiredState) -> list[Diagnostic]:
    checks = (_check_groups, _check_campaigns, _check_providers, _check_settings, check_references)
    return [d for check in checks for d in check(state)]


def _diag(doc: LoadedDocument, loc: Sequence[str | int], message: str,
          severity: Severity = "error") -> Diagnostic:
    line, col, field = doc.locate(loc)
    return Diagnostic(doc.path, line, col, doc.kind, doc.name, field, message, severity)


def _doc(state: DesiredState, kind: str, name: str) -> LoadedDocument:
    doc = state.find(kind, name)
    assert doc is not None, f"{kind}/{name} was indexed without its document"
    return doc


def _check_groups(state: DesiredState) -> Iterator[Diagnostic]:
    default_seen: str | None = None
    country_owner: dict[str, str] = {}
    for name, group in state.groups.items():
        doc = _doc(state, "ProviderGroup", name)
        seen: set[str] = set()
        for index, provider in enumerate(group.spec.providers):
            if provider in seen:
                yield _diag(doc, ["spec", "providers", index], f"provider '{provider}' is listed twice")
            elif provider not in state.providers:
                yield _diag(doc, ["spec", "providers", index], f"unknown provider '{provider}'")
            seen.add(provider)
        if group.spec.default:
            if default_seen is not None:
                yield _diag(doc, ["spec", "default"],
                            f"only one group may be the default; '{default_seen}' already is")
            else:
                default_seen = name
        for index, country in enumerate(group.spec.countries):
            if country not in phonenumbers.SUPPORTED_REGIONS:
                yield _diag(doc, ["spec", "countries", index], f"'{country}' is not a known country code")
            elif country in country_owner:
                yield _diag(doc, ["spec", "countries", index],
                            f"country {country} is already routed by group '{country_owner[country]}'")
            else:
                country_owner[country] = name


def _check_providers(state: DesiredState) -> Iterator[Diagnostic]:
    for name, provider in state.providers.items():
        doc = _doc(state, "Provider", name)
        spec = provider.spec
        sender = spec.from_ if isinstance(spec, TwilioSpec | VonageSpec) else None
        if sender and sender.startswith("+") and not _valid_number(sender):
            yield _diag(doc, ["spec", "from"], f"'{sender}' is not a valid E.164 phone number")
        if isinstance(spec, GenericHttpSpec):
            yield from _check_generic(doc, spec)
        if spec.pricing:
            for country in spec.pricing.perSegment:
                if country != "*" and country not in phonenumbers.SUPPORTED_REGIONS:
                    yield _diag(doc, ["spec", "pricing", "perSegment", country],
                                f"'{country}' is not a country code (use ISO alpha-2 or '*')")


def _check_generic(doc: LoadedDocument, spec: GenericHttpSpec) -> Iterator[Diagnostic]:
    if not re.match(r"^https?://", spec.url) and spec.baseUrl is None:
        yield _diag(doc, ["spec", "url"], "url must start with http:// or https://")
    if spec.batching and spec.batching.enabled:
        for key, value in spec.headers.items():
            if isinstance(value, str) and any(m in value for m in PER_USER_MARKERS):
                yield _diag(doc, ["spec", "headers", key],
                            "headers cannot be personalized when batching is enabled (one request carries many users)")
        for key, value in spec.globals.items():
            if any(m in value for m in PER_USER_MARKERS):
                yield _diag(doc, ["spec", "globals", key],
                            "global key/values sit outside the batch and cannot be personalized")
        if "$$To" in spec.url or "{{" in spec.url:
            yield _diag(doc, ["spec", "url"], "the url cannot be personalized when batching is enabled")
    for key, value in spec.headers.items():
        if isinstance(value, str) and _looks_like_secret(key, value):
            yield _diag(doc, ["spec", "headers", key],
                        "looks like a literal credential; use {secretRef: {env: NAME}}")


_SECRET_HEADER = re.compile(r"(auth|token|secret|password|api[-_]?key|signature)", re.IGNORECASE)


def _looks_like_secret(key: str, value: str) -> bool:
    if not _SECRET_HEADER.search(key):
        return False
    return not value.startswith("$$") and "{{" not in value


def provider_needs_template_id(provider: Provider) -> bool:
    spec = provider.spec
    if isinstance(spec, Msg91Spec):
        return spec.templateId is None
    if isinstance(spec, GenericHttpSpec):
        texts = [spec.url, *spec.body.values(), *spec.globals.values(),
                 *(v for v in spec.headers.values() if isinstance(v, str))]
        return any("$$TemplateID" in text for text in texts)
    return False


def _check_campaigns(state: DesiredState) -> Iterator[Diagnostic]:
    default_group = state.default_group()
    for name, campaign in state.campaigns.items():
        doc = _doc(state, "Campaign", name)
        spec = campaign.spec
        group_name = spec.providerGroup or (default_group.metadata.name if default_group else None)
        if spec.providerGroup and spec.providerGroup not in state.groups:
            yield _diag(doc, ["spec", "providerGroup"], f"unknown provider group '{spec.providerGroup}'")
        elif group_name is None:
            yield _diag(doc, ["spec"], "no providerGroup given and no group is marked default")
        elif not spec.message.templateId:
            yield from _check_template_id(state, doc, campaign, group_name)
        if spec.audience.segment and spec.audience.segment not in state.segments:
            yield _diag(doc, ["spec", "audience", "segment"], f"unknown segment '{spec.audience.segment}'")
        if spec.schedule and spec.schedule.cron and not croniter.is_valid(spec.schedule.cron):
            yield _diag(doc, ["spec", "schedule", "cron"], f"invalid cron expression '{spec.schedule.cron}'")
        if spec.start and spec.end and _as_utc(spec.end, spec.timezone) <= _as_utc(spec.start, spec.timezone):
            yield _diag(doc, ["spec", "end"], "end must be after start")
        if spec.timezone and spec.timezone.zone and not _valid_zone(spec.timezone.zone):
            yield _diag(doc, ["spec", "timezone", "zone"], f"unknown time zone '{spec.timezone.zone}'")
        if spec.timezone and spec.timezone.mode == "fixed" and spec.timezone.zone is None:
            yield _diag(doc, ["spec", "timezone", "zone"], "fixed timezone mode needs 'zone'")
        yield from _check_templates(doc, campaign)


def _check_template_id(state: DesiredState, doc: LoadedDocument, campaign: Campaign,
                       group_name: str) -> Iterator[Diagnostic]:
    """Providers that need a template id, in the campaign's group or (routing by country) any country group."""
    groups = [group_name]
    if campaign.spec.providerGroup is None:
        groups += [name for name, group in state.groups.items() if group.spec.countries and name != group_name]
    for name in groups:
        for provider_name in state.groups[name].spec.providers:
            provider = state.providers.get(provider_name)
            if provider and provider_needs_template_id(provider):
                yield _diag(doc, ["spec", "message"],
                            f"provider '{provider_name}' (group '{name}') needs message.templateId")
                return


def _check_templates(doc: LoadedDocument, campaign: Campaign) -> Iterator[Diagnostic]:
    """Templates that do not parse are errors; variables the audience cannot supply are warnings."""
    for problem in template_problems(campaign):
        severity: Severity = ("error" if problem.error or problem.message.startswith("template does not parse")
                              else "warning")
        yield _diag(doc, problem.field, problem.message, severity)


def _check_settings(state: DesiredState) -> Iterator[Diagnostic]:
    doc = state.find("Settings", state.settings.metadata.name)
    if doc is None:
        return
    spec = state.settings.spec
    if not _valid_zone(spec.defaultTimezone):
        yield _diag(doc, ["spec", "defaultTimezone"], f"unknown time zone '{spec.defaultTimezone}'")
    for index, window in enumerate(spec.freezeWindows):
        if not croniter.is_valid(window.cron):
            yield _diag(doc, ["spec", "freezeWindows", index, "cron"], f"invalid cron expression '{window.cron}'")


def _as_utc(moment: datetime, timezone: TimezoneSpec | None) -> datetime:
    """Naive timestamps are read in the campaign zone (UTC when it has none or it is unknown)."""
    if moment.tzinfo is not None:
        return moment
    zone = timezone.zone if timezone and timezone.zone and _valid_zone(timezone.zone) else "UTC"
    return moment.replace(tzinfo=ZoneInfo(zone))


def _valid_zone(zone: str) -> bool:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _valid_number(number: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False
