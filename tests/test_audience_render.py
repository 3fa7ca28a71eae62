"""Per-user rendering: Liquid personalization, emoji / UCS-2, failures as values, strict checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_audience_support import make_campaign

from reconciler.audience import EventRecord, Member
from reconciler.render import (
    Rendered,
    RenderFailure,
    compile_fast,
    compile_for_send,
    render_context,
    render_message,
    template_problems,
)


def member(**properties: Any) -> Member:
    return Member(user_id="user-12345678", phone="+14155550101", timezone="America/New_York", country="US",
                  properties=properties)


def campaign(body: str, **spec: Any) -> Any:
    message = {"body": body, **spec.pop("message", {})}
    return make_campaign("promo", message=message, **spec)


def test_personalization_with_user_campaign_and_filters() -> None:
    c = campaign("Hi {{ user.first_name | default: 'there' }}, {{ campaign.name }} for {{ user.country }}: "
                 "code {{ user.id | slice: 5, 4 | upcase }}{% if user.vip %} (VIP){% endif %}")
    rendered = render_message(c, member(first_name="Ann", vip=True))
    assert isinstance(rendered, Rendered)
    assert rendered.body == "Hi Ann, promo for US: code 1234 (VIP)"
    assert rendered.encoding == "GSM-7" and rendered.segments == 1
    assert render_message(c, member()).body == "Hi there, promo for US: code 1234"  # type: ignore[union-attr]


def test_emoji_and_non_latin_text_switch_to_ucs2_and_count_segments() -> None:
    c = campaign("{{ user.first_name }}, your coupon 🎁 is ready")
    rendered = render_message(c, member(first_name="Zoë"))
    assert isinstance(rendered, Rendered)
    assert rendered.body == "Zoë, your coupon 🎁 is ready"
    assert rendered.encoding == "UCS-2"
    hindi = render_message(campaign("नमस्ते {{ user.first_name }}! " * 7), member(first_name="अनु"))
    assert isinstance(hindi, Rendered) and hindi.encoding == "UCS-2"
    assert len(hindi.body) == 7 * 12 and hindi.segments == 2  # 84 UTF-16 units > 70 → parts of at most 67
    gsm_accent = render_message(campaign("Olá {{ user.first_name }}"), member(first_name="Zoë"))
    assert isinstance(gsm_accent, Rendered) and gsm_accent.encoding == "UCS-2"  # 'á' is not in GSM-7
    plain = render_message(campaign("x" * 161), member())
    assert isinstance(plain, Rendered) and (plain.encoding, plain.segments) == ("GSM-7", 2)


def test_event_properties_for_live_campaigns() -> None:
    c = campaign("You left {{ event.product_name }} ({{ event.name }}) in your cart",
                 type="live", trigger={"event": {"name": "added_to_cart"}})
    event = EventRecord("user-12345678", "added_to_cart", datetime(2026, 12, 1, tzinfo=UTC), {"product_name": "Shoes"})
    assert render_message(c, member(), event=event).body == "You left Shoes (added_to_cart) in your cart"  # type: ignore[union-attr]
    assert render_message(c, member(), event={"product_name": "Hat", "name": "x"}).body.startswith("You left Hat")  # type: ignore[union-attr]


def test_template_variables_render_in_order() -> None:
    c = campaign("Dear {{ user.first_name }}, {{ user.balance }} due",
                 message={"templateId": "T1", "templateVariables": ["user.first_name", "{{ user.balance | prepend: '$' }}"]})
    rendered = render_message(c, member(first_name="Ann", balance=12.5))
    assert isinstance(rendered, Rendered) and rendered.template_variables == ("Ann", "$12.5")


@pytest.mark.parametrize(("body", "properties", "reason"), [
    ("Hi {{ user.first_name }}", {}, "first_name"),  # missing without default
    ("{{ event.product }}", {}, "event"),  # no event in a past_behavior run
    ("{{ user.n | divided_by: 0 }}", {"n": 4}, "divide"),
    ("{{ user.first_name | nosuchfilter }}", {"first_name": "A"}, "nosuchfilter"),
    ("{% for i in (1..100000) %}x{% endfor %}", {}, "limit"),
    ("{{ user.empty }}", {"empty": ""}, "empty"),
])
def test_render_failures_are_values_never_exceptions(body: str, properties: dict[str, Any], reason: str) -> None:
    result = render_message(campaign(body), member(**properties))
    assert isinstance(result, RenderFailure)
    assert reason in result.reason.lower()


def test_templates_cannot_read_files() -> None:
    result = render_message(campaign("{% include '/etc/passwd' %}"), member())
    assert isinstance(result, RenderFailure)


def test_linked_content_is_lenient_when_missing() -> None:
    c = campaign("Offer: {{ linked.offer.code }}!", message={"linkedContent": [
        {"name": "offer", "url": "https://offers.example/{{ user.id }}", "onError": "send_without"}]})
    assert render_message(c, member(), linked={"offer": {"code": "SAVE10"}}).body == "Offer: SAVE10!"  # type: ignore[union-attr]
    assert render_message(c, member(), linked={}).body == "Offer: !"  # type: ignore[union-attr]


def test_templates_are_compiled_once() -> None:
    source = "Cached {{ user.first_name }} {% if user.vip %}vip{% endif %}"
    compile_for_send.cache_clear()
    for _ in range(5):
        render_message(campaign(source), member(first_name="A"))
    info = compile_for_send.cache_info()
    assert info.misses == 1 and info.hits >= 4


# -- the fast path renders exactly what Liquid renders ------------------------------------------

values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                   st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


FILTER_CHAINS = ["", " | upcase", " | downcase | capitalize", " | slice: 0, 3", " | slice: 1", " | truncate: 5",
                 " | append: '!' | prepend: \"<\"", " | default: 'D'", " | default", " | size", " | plus: 2",
                 " | times: 3 | round", " | abs", " | strip", " | replace: 'a', 'b'", " | remove: 'x'",
                 " | divided_by: 0", " | modulo: 2", " | default: 'D' | upcase", " | upcase | default: 'D'"]
PATHS = ["user.a", "user.b.c", "user.a.size", "user.b.first", "event.x", "linked.offer.code", "campaign.name"]


@settings(max_examples=400, deadline=None)
@given(value=values, other=values, missing=st.booleans(), path=st.sampled_from(PATHS),
       chain=st.sampled_from(FILTER_CHAINS), second=st.sampled_from(FILTER_CHAINS))
def test_fast_path_matches_liquid(value: Any, other: Any, missing: bool, path: str, chain: str, second: str) -> None:
    source = "Hi {{ " + path + chain + " }} and {{ user.b.c" + second + " }}."
    fast = compile_fast(source)
    assert fast is not None
    props: dict[str, Any] = {"b": {"c": other}}
    if not missing:
        props["a"] = value
    context = render_context(campaign(source), member(**props))
    try:
        expected: str | None = compile_for_send(source).render(**context)
    except Exception:
        expected = None
    got = fast.render(context)
    if got is not None:  # None means "leave it to Liquid"
        assert got == expected
    if expected is None:
        assert got is None


def test_fast_path_is_used_for_common_templates() -> None:
    context = render_context(campaign("x"), member(first_name="Zoë"))
    fast = compile_fast("{{ user.first_name | default: 'there' | upcase }} {{ user.id | slice: 0, 6 }}")
    assert fast is not None and fast.render(context) == "ZOË user-1"


@pytest.mark.parametrize("source", [
    "{% if x %}a{% endif %}", "{{ user.a | date: '%B' }}", "{{- user.a }}", "{{ user.a | default: 'x\\'y' }}",
    "{{ user.a | default: 'x', allow_false: true }}", "{{ user.a | times: 1.5 }}", "{{ 'now' | date: '%B' }}",
    "{{ other.a }}", "{# c #}", "{{ user }}",
])
def test_fast_path_declines_anything_not_plain(source: str) -> None:
    assert compile_fast(source) is None


# -- validate-time strict checks ------------------------------------------------------------------


def test_template_problems_catch_unknown_variables() -> None:
    c = campaign("{{ usr.name }} {{ event.x }} {{ linked.nope.y }} {{ campaign.budget }} {{ user.first_name }} "
                 "{{ user.nickname | default: 'pal' }} {{ user.id }}")
    problems = [p.message for p in template_problems(c, user_properties={"first_name"})]
    assert any("'usr.name' is not defined" in p for p in problems)
    assert any("past_behavior campaigns have none" in p for p in problems)
    assert any("not declared" in p for p in problems)
    assert any("not a campaign field" in p for p in problems)
    assert not any("nickname" in p or "first_name" in p or "user.id" in p for p in problems)
    assert any("no user has property 'zip'" in p.message
               for p in template_problems(campaign("{{ user.zip }}"), user_properties={"first_name"}))


def test_template_problems_report_parse_errors_and_linked_urls() -> None:
    broken = campaign("{% if %}")
    assert any("does not parse" in p.message for p in template_problems(broken))
    c = campaign("{{ linked.a.b }}", message={"linkedContent": [
        {"name": "a", "url": "https://x.example/{{ linked.a.id }}"}]})
    problems = template_problems(c)
    assert [p.field for p in problems] == [("spec", "message", "linkedContent", 0, "url")]


def test_examples_render_for_a_typical_user(example_paths: list[Any]) -> None:
    from reconciler.loading import load_paths

    state = load_paths(example_paths).state
    user = member(first_name="Zoë", balance="12.50")
    event = {"product_name": "Shoes", "cart_id": "c1", "destination": "Paris", "departure_at": "2026-12-05T10:00:00Z"}
    for c in state.campaigns.values():
        result = render_message(c, user, event=event if c.spec.type == "live" else None)
        assert isinstance(result, Rendered), (c.name, result)
        assert template_problems(c) == []
