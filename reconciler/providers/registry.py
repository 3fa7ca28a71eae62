"""Build provider adapters from the desired state, pointing them at the real API, a spec.baseUrl, or
the mock server (HERALD_PROVIDER_BASE_URL)."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from ..config import RuntimeConfig
from ..models import Provider, Settings
from ..models.common import Secret
from ..models.provider import (
    ExotelSpec,
    GenericHttpSpec,
    Msg91Spec,
    NetcoreSpec,
    TwilioSpec,
    VonageSpec,
)
from ..outbound import OutboundPolicy
from ..secrets import REDACTOR, resolve_secret
from . import exotel, msg91, netcore, twilio, vonage
from .base import ProviderAdapter
from .exotel import ExotelAdapter
from .generic_http import GenericHttpAdapter
from .msg91 import Msg91Adapter
from .netcore import NetcoreAdapter
from .twilio import TwilioAdapter
from .vonage import VonageAdapter

RECEIPT_SECRET_ENV = "HERALD_RECEIPT_SECRET"


def real_base_url(provider: Provider) -> str:
    spec = provider.spec
    if isinstance(spec, TwilioSpec):
        return twilio.REAL_BASE_URL
    if isinstance(spec, VonageSpec):
        return vonage.REAL_BASE_URL
    if isinstance(spec, Msg91Spec):
        return msg91.REAL_BASE_URL
    if isinstance(spec, ExotelSpec):
        return exotel.real_base_url(spec)
    if isinstance(spec, NetcoreSpec):
        return netcore.REAL_BASE_URL
    parts = urlsplit(spec.url)
    return f"{parts.scheme}://{parts.netloc}"


def base_url_for(provider: Provider, config: RuntimeConfig | None = None) -> str:
    """spec.baseUrl, else {HERALD_PROVIDER_BASE_URL}/{type}, else the provider's real API."""
    spec = provider.spec
    if spec.baseUrl:
        return spec.baseUrl.rstrip("/")
    if config and config.provider_base_url:
        root = f"{config.provider_base_url.rstrip('/')}/{spec.type}"
        return f"{root}/{provider.name}" if isinstance(spec, GenericHttpSpec) else root
    return real_base_url(provider)


def generic_policy(provider: Provider, config: RuntimeConfig | None, settings: Settings | None,
                   environ: dict[str, str] | None = None) -> OutboundPolicy | None:
    """The outbound policy a generic provider's requests must pass: Settings spec.outbound.allowNetworks
    plus HERALD_OUTBOUND_ALLOW. None (exempt) only when its URL is re-rooted onto the operator's
    HERALD_PROVIDER_BASE_URL (the mock): that address comes from the environment, not from a commit."""
    spec = provider.spec
    if not spec.baseUrl and config and config.provider_base_url:
        return None
    return OutboundPolicy.from_settings(settings, environ)


def generic_url(provider: Provider, config: RuntimeConfig | None = None) -> str:
    """The full request URL of a generic provider: its url, re-rooted when a base URL applies."""
    spec = provider.spec
    assert isinstance(spec, GenericHttpSpec)
    if not spec.baseUrl and not (config and config.provider_base_url):
        return spec.url
    parts = urlsplit(spec.url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{base_url_for(provider, config)}{parts.path}{query}"


def _primary_secret(provider: Provider) -> Secret | None:
    spec = provider.spec
    if isinstance(spec, TwilioSpec):
        return spec.authToken
    if isinstance(spec, VonageSpec):
        return spec.signatureSecret or spec.apiSecret
    if isinstance(spec, Msg91Spec):
        return spec.authKey
    if isinstance(spec, ExotelSpec):
        return spec.apiToken
    if isinstance(spec, NetcoreSpec):
        return spec.password
    if spec.auth and spec.auth.bearer:
        return spec.auth.bearer
    if spec.auth and spec.auth.basic:
        return spec.auth.basic.password
    return next((v for v in spec.headers.values() if isinstance(v, Secret)), None)


def receipt_token(provider: Provider, environ: dict[str, str] | None = None) -> str | None:
    """The token an unsigned provider must put in its callback URL (?token=…).

    Derived with HMAC from HERALD_RECEIPT_SECRET when set, else from the provider's own credential,
    so nothing new needs storing and rotating the credential rotates the token. None: no key at all.
    """
    env = os.environ if environ is None else environ
    key = env.get(RECEIPT_SECRET_ENV) or None
    if key is None:
        secret = _primary_secret(provider)
        if secret is None:
            return None
        key = resolve_secret(secret, dict(env))
    token = hmac.new(key.encode(), f"herald-receipts:{provider.name}".encode(), hashlib.sha256).hexdigest()[:32]
    REDACTOR.register(token)
    return token


def with_token(url: str, token: str | None) -> str:
    if not token:
        return url
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}{urlencode({'token': token})}"


def with_public_callback(provider: Provider, config: RuntimeConfig | None,
                         environ: dict[str, str] | None = None) -> Provider:
    """With a public URL (HERALD_PUBLIC_URL / --public-url), providers whose API takes a per-message
    status callback (Twilio and Exotel StatusCallback, Vonage callback) and set no statusCallbackUrl
    get {public}/receipts/{name}, with the receipt token where the provider does not sign."""
    spec = provider.spec
    public = config.public_url if config else None
    if not public or not isinstance(spec, TwilioSpec | VonageSpec | ExotelSpec) or spec.statusCallbackUrl:
        return provider
    url = f"{public.rstrip('/')}/receipts/{provider.name}"
    if isinstance(spec, VonageSpec) and spec.signatureSecret is None:
        url = with_token(url, receipt_token(provider, environ))
    return provider.model_copy(update={"spec": spec.model_copy(update={"statusCallbackUrl": url})})


def build_adapter(provider: Provider, client: httpx.AsyncClient, config: RuntimeConfig | None = None,
                  environ: dict[str, str] | None = None, settings: Settings | None = None) -> ProviderAdapter:
    """Resolve the provider's secrets (SecretError when missing or refused) and return its adapter.

    `settings`: the applied Settings. Generic HTTP providers then take header secrets only from
    spec.secrets.allow, and their requests obey the outbound URL policy (generic_policy)."""
    provider = with_public_callback(provider, config, environ)
    spec, name = provider.spec, provider.name
    base = base_url_for(provider, config)
    if isinstance(spec, TwilioSpec):
        return TwilioAdapter(name, spec, client, base, environ)
    if isinstance(spec, VonageSpec):
        return VonageAdapter(name, spec, client, base, environ)
    if isinstance(spec, Msg91Spec):
        return Msg91Adapter(name, spec, client, base, environ)
    if isinstance(spec, ExotelSpec):
        callback = with_token(spec.statusCallbackUrl, receipt_token(provider, environ)) \
            if spec.statusCallbackUrl else None
        return ExotelAdapter(name, spec, client, base, environ, status_callback=callback)
    if isinstance(spec, NetcoreSpec):
        return NetcoreAdapter(name, spec, client, base, environ)
    allow = settings.spec.secrets.allow if settings is not None else None
    return GenericHttpAdapter(name, spec, client, generic_url(provider, config), environ,
                              outbound=generic_policy(provider, config, settings, environ), header_allow=allow)


def default_client(max_connections: int = 100) -> httpx.AsyncClient:
    """One shared client: pooled keep-alive connections, bounded so a big send cannot open thousands.

    Sends through aiohttp's pool when available (see transport.py), else httpx's own."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    options: dict[str, Any] = {"limits": limits, "timeout": httpx.Timeout(10.0), "follow_redirects": False,
                               "trust_env": False}
    try:
        from .transport import AiohttpTransport, ProviderClient
    except ImportError:  # pragma: no cover - aiohttp is a dependency; keep working without it
        return httpx.AsyncClient(**options)
    return ProviderClient(AiohttpTransport(max_connections=max_connections), **options)
