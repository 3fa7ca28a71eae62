"""The read-only web dashboard the daemon serves under /dashboard (behind the admin token).

Pages: campaigns (status, type, last applied commit, next run), one campaign (run history and a
report with server-drawn SVG charts), and the audit log filtered by commit, campaign or action.

Access: `Authorization: Bearer <HERALD_ADMIN_TOKEN>`, or for browsers a login form that sets an
HttpOnly, SameSite=Strict cookie. The cookie holds an expiry, a nonce and an HMAC over them keyed by
a key derived from the admin token: it never contains the token, it cannot be forged without it,
and rotating the token ends every session. Without a configured token the dashboard is disabled.
Pages are rendered by Jinja2 with autoescaping on; the Content-Security-Policy allows no script.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..audience.store import AudienceStore
from ..clock import Clock
from ..store.base import StateStore
from .dashboard_charts import METRICS, bar_chart, line_chart
from .dashboard_views import (
    NAME_PATTERN,
    AuditFilter,
    DesiredCache,
    audit_view,
    campaign_detail,
    campaign_rows,
    chart_values,
    provider_values,
    tick_label,
)
from .security import (
    BodyIncomplete,
    BodyTooLarge,
    RequestTargetGuard,
    as_bytes,
    bearer_token_ok,
    read_limited_body,
)

if TYPE_CHECKING:
    from ..engine import Engine

ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
SESSION_COOKIE = "herald_session"
SESSION_TTL = timedelta(hours=12)
LOGIN_BODY_LIMIT = 4096
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------- sessions


class SessionKeys:
    """Issue and check stateless session values: `<expires>.<nonce>.<hmac>`."""

    def __init__(self, admin_token: str, clock: Clock, ttl: timedelta = SESSION_TTL) -> None:
        # A key derived from the token (not the token itself) signs sessions.
        self._key = hmac.new(admin_token.encode(), b"herald dashboard session v1", hashlib.sha256).digest()
        self._clock = clock
        self.ttl = ttl

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        expires = int((self._clock.now() + self.ttl).timestamp())
        payload = f"{expires}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, value: str | None) -> bool:
        if not value or value.count(".") != 2:
            return False
        payload, _, mac = value.rpartition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), as_bytes(mac)):  # any cookie text: no raise
            return False
        expires = payload.split(".", 1)[0]
        return expires.isascii() and expires.isdigit() and int(expires) > self._clock.now().timestamp()


# ---------------------------------------------------------------- URLs and templates


@dataclass(frozen=True)
class Urls:
    """Links inside the dashboard, relative to where it is mounted."""

    base: str

    def home(self) -> str:
        return f"{self.base}/"

    def campaign(self, name: str) -> str:
        return f"{self.base}/campaigns/{quote(name, safe='')}"

    def audit(self, **params: str | None) -> str:
        query = urlencode({k: v for k, v in params.items() if v})
        return f"{self.base}/audit" + (f"?{query}" if query else "")

    def login(self, next_path: str | None = None) -> str:
        return f"{self.base}/login" + (f"?{urlencode({'next': next_path})}" if next_path else "")

    def logout(self) -> str:
        return f"{self.base}/logout"

    def static(self, name: str) -> str:
        return f"{self.base}/static/{name}"

    def safe_next(self, target: str | None) -> str:
        """Only a path inside the dashboard is a redirect target (no open redirect)."""
        if not target:
            return self.home()
        parts = urlsplit(target)
        inside = target.startswith(f"{self.base}/") and not target.startswith("//") and "\\" not in target
        return target if inside and not parts.scheme and not parts.netloc else self.home()


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def short_sha(value: str | None) -> str:
    return value[:10] if value else "-"


def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = format_time
    env.filters["sha"] = short_sha
    env.filters["num"] = lambda n: f"{n:,}"
    env.globals["METRICS"] = METRICS
    return env


# ---------------------------------------------------------------- the app


class Dashboard:
    def __init__(self, store: StateStore, audience: AudienceStore | None, clock: Clock,
                 admin_token: str | None) -> None:
        self.store = store
        self.audience = audience
        self.clock = clock
        self.admin_token = admin_token or None
        self.sessions = SessionKeys(self.admin_token, clock) if self.admin_token else None
        self.cache = DesiredCache()
        self.templates = template_environment()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self._guard(self.campaigns), methods=["GET"]),
            Route("/campaigns/{name}", self._guard(self.campaign), methods=["GET"]),
            Route("/audit", self._guard(self.audit), methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=ASSETS / "static")),
        ]

    # -------------------------------------------------------- rendering and access

    def render(self, request: Request, template: str, status_code: int = 200,
               headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
        signed_in = self.signed_in(request)
        authenticated = signed_in or bearer_token_ok(request, self.admin_token)
        html = self.templates.get_template(template).render(
            urls=Urls(_mount_base(request)), signed_in=signed_in, authenticated=authenticated,
            now=self.clock.now(), **context)
        return HTMLResponse(html, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})

    def signed_in(self, request: Request) -> bool:
        return self.sessions is not None and self.sessions.valid(request.cookies.get(SESSION_COOKIE))

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if self.admin_token is None:
                return self.render(request, "disabled.html", status_code=503)
            if bearer_token_ok(request, self.admin_token) or self.signed_in(request):
                return await handler(request)
            if "authorization" in request.headers:
                return self.render(request, "error.html", status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                   title="Unauthorized", message="The bearer token is missing or wrong.")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(Urls(_mount_base(request)).login(target), status_code=303,
                                    headers=SECURITY_HEADERS)

        return guarded

    async def login_form(self, request: Request) -> Response:
        if self.admin_token is None:
            return self.render(request, "disabled.html", status_code=503)
        urls = Urls(_mount_base(request))
        return self.render(request, "login.html", next_path=urls.safe_next(request.query_params.get("next")),
                           error=None)

    async def login(self, request: Request) -> Response:
        if self.admin_token is None or self.sessions is None:
            return self.render(request, "disabled.html", status_code=503)
        urls = Urls(_mount_base(request))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("", FORM_CONTENT_TYPE):
            return self.render(request, "error.html", status_code=415, title="Unsupported form",
                               message=f"Send the login form as {FORM_CONTENT_TYPE}.")
        try:
            form = parse_qs((await read_limited_body(request, LOGIN_BODY_LIMIT)).decode("utf-8", "replace"))
        except BodyTooLarge:
            return self.render(request, "error.html", status_code=413, title="Too large",
                               message="The login form was too large.")
        except BodyIncomplete:
            return self.render(request, "error.html", status_code=400, title="Incomplete",
                               message="The login form was cut short.")
        next_path = urls.safe_next((form.get("next") or [""])[0])
        token = (form.get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return self.render(request, "login.html", status_code=401, next_path=next_path,
                               error="That is not the admin token.")
        response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(SESSION_COOKIE, self.sessions.issue(), max_age=int(self.sessions.ttl.total_seconds()),
                            path=urls.home(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        urls = Urls(_mount_base(request))
        response = RedirectResponse(urls.login(), status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path=urls.home(), httponly=True, samesite="strict")
        return response

    # -------------------------------------------------------- pages

    async def campaigns(self, request: Request) -> Response:
        now = self.clock.now()
        rows = await asyncio.to_thread(campaign_rows, self.store, self.cache, now)
        return self.render(request, "campaigns.html", rows=rows, counts=Counter(r.status for r in rows))

    async def campaign(self, request: Request) -> Response:
        name = request.path_params["name"]
        now = self.clock.now()
        detail = None
        if NAME_PATTERN.match(name):
            detail = await asyncio.to_thread(campaign_detail, self.store, self.audience, self.cache, name, now)
        if detail is None:
            return self.render(request, "error.html", status_code=404, title="Not found",
                               message=f"There is no campaign named {name!r}.")
        timeline_chart = None
        if detail.timeline.buckets:
            buckets, unit = detail.timeline.buckets, detail.timeline.unit
            timeline_chart = line_chart(f"Messages per {unit}", [b.label for b in buckets],
                                        chart_values(detail.timeline),
                                        tick_labels=[tick_label(b.start, unit) for b in buckets])
        provider_chart = bar_chart("Messages per provider", provider_values(detail.by_provider)) \
            if detail.by_provider else None
        return self.render(request, "campaign.html", d=detail, timeline_chart=timeline_chart,
                           provider_chart=provider_chart)

    async def audit(self, request: Request) -> Response:
        filt, problems = AuditFilter.parse(dict(request.query_params))
        view = await asyncio.to_thread(audit_view, self.store, filt)
        return self.render(request, "audit.html", filt=filt, view=view, problems=problems)


def _mount_base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def dashboard_routes(engine: Engine) -> list[BaseRoute]:
    """The dashboard's routes for the daemon, which mounts them at /dashboard."""
    rt = engine.rt
    return Dashboard(rt.store, rt.audience, rt.clock, rt.config.admin_token).routes()


def dashboard_app(store: StateStore, audience: AudienceStore | None, clock: Clock,
                  admin_token: str | None) -> Starlette:
    """A stand-alone app serving only the dashboard at /dashboard (tests, screenshots, inspection)."""
    dashboard = Dashboard(store, audience, clock, admin_token)
    return Starlette(routes=[Mount("/dashboard", routes=dashboard.routes())], middleware=[Middleware(RequestTargetGuard)])
