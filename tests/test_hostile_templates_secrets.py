"""Issue 12, the template, secret and outbound-URL bulkheads at run time (tests/hostile/ covers
`herald validate`): a template past a sandbox limit fails that one message with a reason and never
holds the event loop; secret references resolve only where allowed; outbound requests go only to
checked addresses."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_audience_support import make_campaign, make_settings

from reconciler.audience import Member
from reconciler.clock import FakeClock
from reconciler.linked import LinkedContentFetcher, LinkedUrlPolicy
from reconciler.models.common import Secret
from reconciler.notify import CommitOutcome, Notifier, NotifyConfig
from reconciler.outbound import OutboundPolicy, OutboundRefused, parse_networks, pin
from reconciler.plan import message_impact
from reconciler.render import (
    MAX_RANGE_ITEMS,
    RENDER_BUDGET_SECONDS,
    Rendered,
    RenderFailure,
    render_message,
    render_message_async,
    template_problems,
)
from reconciler.secrets import SecretError, resolve_secret
from reconciler.store import open_state_store

SLOW = ("{% for i in (1..1000) %}{% for j in (1..10) %}{% capture c %}{{ (1..1000) | sort | join: ',' }}"
        "{% endcapture %}{% endfor %}{% endfor %}Hi")
LOOPBACK = parse_networks(["127.0.0.0/8"])
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def member(**properties: Any) -> Member:
    return Member("u1", "+14155550101", "UTC", "US", {"first_name": "Ann", **properties})


def test_a_data_dependent_range_fails_only_the_user_whose_data_exceeds_it() -> None:
    campaign = make_campaign(message={"body": "{% for i in (1..user.n) %}x{% endfor %}!"})
    assert not [p for p in template_problems(campaign) if p.error]  # nothing validate could refuse
    small = render_message(campaign, member(n=3))
    assert isinstance(small, Rendered) and small.body == "xxx!"
    huge = render_message(campaign, member(n=10 ** 30))
    assert isinstance(huge, RenderFailure)
    assert f"the limit is {MAX_RANGE_ITEMS}" in huge.reason


@pytest.mark.parametrize("body", [
    "{% for i in (1..1000000000) %}{% endfor %}Hi",
    "{{ (1..10000000) | join: ',' }}",
    "Hi {{ (1..10000000) | sort | first }}",
    "{% for i in (1..100) %}{% for j in (1..100) %}{% for k in (1..100) %}x{% endfor %}{% endfor %}{% endfor %}",
    SLOW,
    "{{ 'aaaaaaaaaa'" + " | replace: 'a', 'aaaaaaaaaa'" * 9 + " }}",  # 10 GB if built
    "{{ user.first_name | split: '' | join: '" + "x" * 9000 + "' | split: '' | join: '" + "y" * 900 + "' }}",
])
def test_send_time_limits_fail_the_message_quickly(body: str) -> None:
    started = time.monotonic()
    result = render_message(make_campaign(message={"body": body}), member())
    elapsed = time.monotonic() - started
    assert isinstance(result, RenderFailure), result
    assert "limit" in result.reason or "budget" in result.reason
    assert elapsed < RENDER_BUDGET_SECONDS * 6  # the budget plus a busy machine's slack; unbounded took minutes


def test_plan_estimates_use_the_same_limits() -> None:
    started = time.monotonic()
    impact = message_impact("{% for i in (1..1000000000) %}{% endfor %}Hi")
    assert impact.approximate and time.monotonic() - started < 2.0


def test_slow_renders_do_not_hold_the_event_loop() -> None:
    """Six renders that each use their whole budget, while a ticker measures the loop's stalls."""
    campaign = make_campaign(message={"body": SLOW})

    async def scenario() -> tuple[list[float], float, list[Rendered | RenderFailure]]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await asyncio.gather(*(render_message_async(campaign, member()) for _ in range(6)))
        elapsed = time.monotonic() - started
        done.set()
        await tick
        return gaps, elapsed, results

    gaps, elapsed, results = asyncio.run(scenario())
    assert all(isinstance(r, RenderFailure) and "budget" in r.reason for r in results)
    assert elapsed >= RENDER_BUDGET_SECONDS  # the renders really ran for their budget...
    # ...and the loop kept turning meanwhile (rendering on the loop: one tick, one gap as long as it all)
    assert len(gaps) >= 5 and max(gaps) < elapsed * 0.75, (len(gaps), max(gaps), elapsed)


# ---------------------------------------------------------------- secrets


def test_header_secrets_need_the_allow_list_and_never_herald_variables() -> None:
    env = {"OFFERS_TOKEN": "offers-token-1", "HERALD_ADMIN_TOKEN": "admin-token-1"}
    offers = Secret.model_validate({"secretRef": {"env": "OFFERS_TOKEN"}})
    admin = Secret.model_validate({"secretRef": {"env": "HERALD_ADMIN_TOKEN"}})
    assert resolve_secret(offers, env, use="header", allow=["OFFERS_TOKEN"]) == "offers-token-1"
    with pytest.raises(SecretError, match=r"spec\.secrets\.allow"):
        resolve_secret(offers, env, use="header", allow=[])
    for use in ("header", "credential"):
        with pytest.raises(SecretError, match="daemon's own variables") as caught:
            resolve_secret(admin, env, use=use, allow=["HERALD_ADMIN_TOKEN"])  # type: ignore[arg-type]
        assert "admin-token-1" not in str(caught.value)
    github = Secret.model_validate({"secretRef": {"env": "HERALD_GITHUB_TOKEN"}})
    assert resolve_secret(github, {"HERALD_GITHUB_TOKEN": "gh-token-1"}, use="notification") == "gh-token-1"


def test_file_secrets_resolve_only_inside_the_secrets_directory(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_dir, outside = tmp_path / "secrets", tmp_path / "outside"
    secrets_dir.mkdir()
    outside.mkdir()
    (secrets_dir / "token").write_text("inside-value\n")
    (outside / "db").write_text("outside-value")
    (secrets_dir / "link").symlink_to(outside / "db")

    def read(path: str) -> str:
        return resolve_secret(Secret.model_validate({"secretRef": {"file": path}}))

    monkeypatch.delenv("HERALD_SECRETS_DIR", raising=False)
    with pytest.raises(SecretError, match="HERALD_SECRETS_DIR is not set"):
        read("token")
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(secrets_dir))
    assert read("token") == "inside-value" == read(str(secrets_dir / "token"))
    for escape in ("../outside/db", str(outside / "db"), "link", "/etc/passwd"):
        with pytest.raises(SecretError) as caught:
            read(escape)
        assert "outside-value" not in str(caught.value) and "secrets directory" in str(caught.value)


def _recording_client(seen: list[httpx.Request]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": "SAVE10"})

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_linked_headers_follow_the_settings_allow_list_at_fetch_time() -> None:
    seen: list[httpx.Request] = []
    source = {"name": "offer", "url": "http://127.0.0.1:9000/offer",
              "headers": {"Authorization": {"secretRef": {"env": "OFFERS_TOKEN"}, "format": "Bearer {value}"}}}
    campaign = make_campaign(message={"body": "{{ linked.offer.code }}", "linkedContent": [source]})
    settings = make_settings(outbound={"allowNetworks": ["127.0.0.0/8"]})
    fetcher = LinkedContentFetcher(clock=FakeClock(NOW), policy=LinkedUrlPolicy(), client=_recording_client(seen),
                                   environ={"OFFERS_TOKEN": "offers-token-2"}, settings=lambda: settings)
    refused = fetcher.fetch(campaign, member())
    assert refused.action == "skip_user" and "spec.secrets.allow" in refused.errors[0] and seen == []
    settings = make_settings(outbound={"allowNetworks": ["127.0.0.0/8"]}, secrets={"allow": ["OFFERS_TOKEN"]})
    sent = fetcher.fetch(campaign, member())
    assert sent.values == {"offer": {"code": "SAVE10"}}
    assert seen[0].headers["Authorization"] == "Bearer offers-token-2"


# ---------------------------------------------------------------- outbound URLs


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        family = socket.AF_INET6
        return [(family if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
                for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_every_resolved_address_is_checked_and_the_request_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving_to(monkeypatch, "93.184.216.34", "10.0.0.8")  # one public, one private answer
    with pytest.raises(OutboundRefused, match=re.escape("offers.example.com resolves to 10.0.0.8, a private address")):
        pin("https://offers.example.com/x", OutboundPolicy())
    _resolving_to(monkeypatch, "93.184.216.34")
    pinned = pin("https://Offers.Example.com/a/./b/../%7Ec?u=1", OutboundPolicy())
    assert pinned.url == "https://93.184.216.34/a/~c?u=1"
    assert pinned.headers == {"Host": "offers.example.com"}
    assert pinned.extensions == {"sni_hostname": "offers.example.com"}  # TLS still verifies the name


def test_linked_content_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    campaign = make_campaign(message={"body": "{{ linked.offer.code }}", "linkedContent": [
        {"name": "offer", "url": "http://offers.example.com/offer?u={{ user.id }}"}]})
    fetcher = LinkedContentFetcher(clock=FakeClock(NOW), policy=LinkedUrlPolicy(), client=_recording_client(seen))
    _resolving_to(monkeypatch, "169.254.169.254")  # a name the attacker points at cloud metadata
    refused = fetcher.fetch(campaign, member())
    assert refused.action == "skip_user" and "link-local" in refused.errors[0] and seen == []
    _resolving_to(monkeypatch, "93.184.216.34")
    assert fetcher.fetch(campaign, member()).values == {"offer": {"code": "SAVE10"}}
    assert seen[0].url.host == "93.184.216.34" and seen[0].headers["Host"] == "offers.example.com"


def test_webhooks_to_internal_addresses_are_refused_without_a_request(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    store = open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        config = NotifyConfig(webhook_url="http://169.254.169.254/latest/meta-data/")
        with Notifier(store, config, clock=FakeClock(NOW), client=_recording_client(seen)) as notifier:
            report = notifier.notify_commit(CommitOutcome("a" * 40, "applied", "Applied"))
        assert report.channels == {"webhook": "failed"} and "link-local" in report.errors["webhook"]
        assert seen == []
        allowed = NotifyConfig(webhook_url="http://127.0.0.1:9/hook", outbound=OutboundPolicy(LOOPBACK))
        with Notifier(store, allowed, clock=FakeClock(NOW), client=_recording_client(seen)) as notifier:
            assert notifier.notify_commit(CommitOutcome("b" * 40, "applied", "Applied")).channels == {"webhook": "sent"}
        assert [str(r.url) for r in seen] == ["http://127.0.0.1:9/hook"]
    finally:
        store.close()


def test_plans_teach_the_redactor_linked_header_secrets_even_when_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.loading import SourceFile, load_files
    from reconciler.plan import register_referenced_secrets
    from reconciler.secrets import redact

    monkeypatch.setenv("OFFERS_TOKEN_X", "linked-header-secret-77")
    monkeypatch.setenv("HERALD_ADMIN_TOKEN", "daemon-admin-secret-78")
    campaign = """apiVersion: herald/v1
kind: Campaign
metadata: {name: promo}
spec:
  type: past_behavior
  owner: team@example.com
  schedule: {once: "2027-01-05T10:00:00"}
  message:
    body: "Hi"
    linkedContent:
    - name: offer
      url: https://offers.example.com/api
      headers:
        X-Key: {secretRef: {env: OFFERS_TOKEN_X}}
        X-Admin: {secretRef: {env: HERALD_ADMIN_TOKEN}}
"""
    result = load_files([SourceFile("campaigns/promo.yaml", campaign.encode())])
    assert any("HERALD_ADMIN_TOKEN" in d.message for d in result.errors)  # refused, and yet:
    register_referenced_secrets(result.state)
    assert redact("a linked-header-secret-77 b daemon-admin-secret-78") == "a *** b ***"


def test_one_lookup_decides_both_the_admin_guard_and_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the first answer is public, any later one loopback (allowed here, as in a dev
    setup). The request goes to the first answer; a second lookup would have reached the admin port."""
    answers = iter([["93.184.216.34"]] + [["127.0.0.1"]] * 10)

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    seen: list[httpx.Request] = []
    campaign = make_campaign(message={"body": "{{ linked.offer.code }}", "linkedContent": [
        {"name": "offer", "url": "http://rebind.example.com:8080/offer"}]})
    policy = LinkedUrlPolicy(admin_ports=frozenset({8080}), allow_networks=LOOPBACK)
    fetcher = LinkedContentFetcher(clock=FakeClock(NOW), policy=policy, client=_recording_client(seen))
    assert fetcher.fetch(campaign, member()).action == "send"
    assert [r.url.host for r in seen] == ["93.184.216.34"]
