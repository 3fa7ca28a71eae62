"""Secret references and outbound URLs in the desired state, checked by `herald validate`.

The same rules the daemon enforces when it resolves a secret (secrets.py) or makes a request
(outbound.py, linked.py), checked here without any value or network access, so CI rejects what the
daemon would refuse:
- a secretRef in a header (linked content, generic HTTP provider headers) must name a secret listed
  in Settings `spec.secrets.allow`; no reference anywhere may name a HERALD_* variable (notification
  tokens may use HERALD_GITHUB_TOKEN / HERALD_NOTIFY_WEBHOOK); file references stay inside
  HERALD_SECRETS_DIR;
- outbound URLs (linked content, generic HTTP url/baseUrl, webhooks, the GitHub API base) whose host
  is a literal non-public address (or localhost) must be allowed by Settings
  `spec.outbound.allowNetworks` or HERALD_OUTBOUND_ALLOW; linked content never targets admin paths on
  this machine. Host names are resolved and checked again at request time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .diagnostics import Diagnostic
from .linked import ADMIN_PATH_PREFIXES
from .models import Campaign, Provider, Settings
from .models.common import Secret
from .models.provider import GenericHttpSpec
from .outbound import (
    Network,
    OutboundPolicy,
    OutboundRefused,
    literal_address,
    normalize_url,
    parse_networks,
    static_refusal,
)
from .secrets import RESERVED_PREFIX, SecretUse, file_problem, reference_problem, secrets_dir

if TYPE_CHECKING:
    from .loading import DesiredState, LoadedDocument

Location = tuple[str | int, ...]
TEMPLATE_MARKERS = ("{{", "{%", "$$")


def _secrets_under(value: Any, path: Location) -> Iterator[tuple[Location, Secret]]:
    if isinstance(value, Secret):
        yield path, value
    elif hasattr(value, "__pydantic_fields__"):
        for name, info in type(value).model_fields.items():
            yield from _secrets_under(getattr(value, name), (*path, info.alias or name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets_under(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secrets_under(item, (*path, index))


def _use_of(document: Any, path: Location) -> SecretUse:
    if isinstance(document, Settings):
        return "notification"
    if isinstance(document, Provider) and isinstance(document.spec, GenericHttpSpec) and path[:2] == ("spec", "headers"):
        return "header"
    return "credential"


def secret_references(document: Any) -> Iterator[tuple[Location, Secret | None, SecretUse]]:
    """Every secret reference of a document: (location, secret or None when malformed, use)."""
    for path, secret in _secrets_under(document, ()):
        yield path, secret, _use_of(document, path)
    if isinstance(document, Campaign):
        for index, source in enumerate(document.spec.message.linkedContent):
            for name, given in source.headers.items():
                if isinstance(given, str):
                    continue
                try:
                    parsed: Secret | None = Secret.model_validate(given)
                except ValidationError:
                    parsed = None
                yield ("spec", "message", "linkedContent", index, "headers", name), parsed, "header"


def campaign_secrets(campaign: Campaign, state: DesiredState) -> list[str]:
    """Names (never values) of every secret sending this campaign uses: its linked-content headers and
    the credentials and headers of every provider it may route through."""
    names = {secret.secretRef.describe() for _, secret, _ in secret_references(campaign) if secret is not None}
    for provider_name in _campaign_providers(campaign, state):
        provider = state.providers.get(provider_name)
        if provider is not None:
            names.update(secret.secretRef.describe() for _, secret, _ in secret_references(provider)
                         if secret is not None)
    return sorted(names)


def _campaign_providers(campaign: Campaign, state: DesiredState) -> set[str]:
    group_name = campaign.spec.providerGroup
    default = state.default_group()
    groups = [group_name] if group_name else ([default.name] if default else [])
    if group_name is None:  # routing by country may pick any country group
        groups += [name for name, group in state.groups.items() if group.spec.countries]
    return {p for name in groups if name in state.groups for p in state.groups[name].spec.providers}


def check_references(state: DesiredState) -> Iterator[Diagnostic]:
    settings = state.settings
    allow = settings.spec.secrets.allow
    directory = secrets_dir()
    policy = OutboundPolicy(OutboundPolicy.from_env().allow_networks + _valid_networks(settings))
    for doc in state.documents:
        yield from _check_secrets(doc, allow, directory)
        yield from _check_urls(doc, policy)
    settings_doc = state.find("Settings", settings.metadata.name)
    if settings_doc is not None:
        yield from _check_settings_lists(settings_doc, settings)


def _valid_networks(settings: Settings) -> tuple[Network, ...]:
    """The allowNetworks entries that parse (the others are reported by _check_settings_lists)."""
    networks: list[Network] = []
    for entry in settings.spec.outbound.allowNetworks:
        try:
            networks.extend(parse_networks([entry]))
        except ValueError:
            continue
    return tuple(networks)


def _diag(doc: LoadedDocument, loc: Sequence[str | int], message: str) -> Diagnostic:
    line, col, field = doc.locate(loc)
    return Diagnostic(doc.path, line, col, doc.kind, doc.name, field, message)


def _check_secrets(doc: LoadedDocument, allow: Sequence[str], directory: Any) -> Iterator[Diagnostic]:
    for path, secret, use in secret_references(doc.model):
        if secret is None:
            yield _diag(doc, path, "a header is a string or {secretRef: {env: NAME}} / {secretRef: {file: PATH}}")
            continue
        ref = secret.secretRef
        problem = (file_problem(ref.file, directory) if ref.file else None) or reference_problem(ref, use, allow)
        if problem:
            yield _diag(doc, (*path, "secretRef"), problem)


def _static_prefix(url: str) -> str | None:
    """The URL up to its first template marker, when that still holds the whole host; else None."""
    cut = min((url.find(m) for m in TEMPLATE_MARKERS if m in url), default=-1)
    if cut < 0:
        return url
    prefix = url[:cut]
    _scheme, sep, rest = prefix.partition("://")
    return prefix if sep and "/" in rest else None


def _outbound_urls(document: Any) -> Iterator[tuple[Location, str, bool]]:
    """(location, URL, is linked content) for every outbound URL of a document."""
    if isinstance(document, Campaign):
        for index, source in enumerate(document.spec.message.linkedContent):
            yield ("spec", "message", "linkedContent", index, "url"), source.url, True
    elif isinstance(document, Provider) and isinstance(document.spec, GenericHttpSpec):
        yield ("spec", "url"), document.spec.url, False
        if document.spec.baseUrl:
            yield ("spec", "baseUrl"), document.spec.baseUrl, False
    elif isinstance(document, Settings):
        spec = document.spec
        if spec.alerts.webhookUrl:
            yield ("spec", "alerts", "webhookUrl"), spec.alerts.webhookUrl, False
        if isinstance(spec.notifications.webhookUrl, str):
            yield ("spec", "notifications", "webhookUrl"), spec.notifications.webhookUrl, False
        if spec.notifications.github is not None:
            yield ("spec", "notifications", "github", "apiBaseUrl"), spec.notifications.github.apiBaseUrl, False


def _check_urls(doc: LoadedDocument, policy: OutboundPolicy) -> Iterator[Diagnostic]:
    for path, url, linked in _outbound_urls(doc.model):
        static = _static_prefix(url)
        if static is None:
            continue  # the host is templated: checked at request time
        if isinstance(doc.model, Provider) and static == url and "://" not in url:
            continue  # reported by the generic-HTTP check (url must start with http(s)://)
        refusal = (_admin_path_refusal(static) if linked else None) or static_refusal(static, policy)
        if refusal:
            yield _diag(doc, path, f"outbound URL refused: {refusal}")


def _admin_path_refusal(url: str) -> str | None:
    try:
        target = normalize_url(url)
    except OutboundRefused as exc:
        return str(exc)
    address = literal_address(target.host)
    local = (target.host == "localhost" or target.host.endswith(".localhost")
             or (address is not None and (address.is_loopback or address.is_unspecified)))
    path = target.decoded_path
    if local and any(path.startswith(prefix) or path + "/" == prefix for prefix in ADMIN_PATH_PREFIXES):
        return "the URL targets an admin endpoint on this machine"
    return None


def _check_settings_lists(doc: LoadedDocument, settings: Settings) -> Iterator[Diagnostic]:
    for index, name in enumerate(settings.spec.secrets.allow):
        if name.startswith(RESERVED_PREFIX):
            yield _diag(doc, ("spec", "secrets", "allow", index),
                        f"'{name}' is one of the daemon's own variables ({RESERVED_PREFIX}*); it cannot be allowed")
    for index, entry in enumerate(settings.spec.outbound.allowNetworks):
        try:
            parse_networks([entry])
        except ValueError as exc:
            yield _diag(doc, ("spec", "outbound", "allowNetworks", index), str(exc))
