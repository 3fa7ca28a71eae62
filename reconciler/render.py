"""Message rendering: the Liquid environments shared by validation, plans and delivery.

Template variables: user.<property> (plus user.id, user.phone, user.timezone, user.country),
event.<property> (live campaigns; also event.name and event.ts unless a property of that name
exists), campaign.name/type/owner/labels, linked.<source>.

Sending renders strictly: a variable that is missing for a user fails that user's render (reported
as a RenderFailure value, never raised) unless the template gives it a `default`; a missing variable
in `{% if %}` is simply false. Linked content is lenient, so a source that failed with
onError: send_without renders as empty. Templates cannot read files (no loader).

Sandbox: every environment here is a SandboxEnvironment with the same limits, so `herald validate`,
plans, previews and sending agree on what a template may do: at most LOOP_ITERATION_LIMIT loop
iterations (nested loops multiply), ranges `(a..b)` of at most MAX_RANGE_ITEMS items (also when
piped into filters such as join or sort), OUTPUT_LIMIT_BYTES of output, bounded local variables and
a wall-clock budget of RENDER_BUDGET_SECONDS per message, checked at every loop iteration and output
write. The daemon renders templates that can repeat work (loops, ranges) on a worker pool of
their own, off its event loop (render_message_async).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache, partial
from typing import TYPE_CHECKING, Any, TextIO

from liquid import BoundTemplate, Environment, FalsyStrictUndefined, RenderContext, Undefined
from liquid.builtin.expressions.primitive import IntegerLiteral, RangeLiteral
from liquid.builtin.tags.for_tag import ForNode
from liquid.builtin.tags.tablerow_tag import TablerowNode
from liquid.exceptions import LiquidError, ResourceLimitError, TemplateNotFoundError
from liquid.expression import Expression
from liquid.output import LimitedStringIO
from liquid.stringify import to_liquid_string

from .encoding import SmsEncoding, analyze
from .secrets import redact

if TYPE_CHECKING:
    from .audience.records import EventRecord, Member
    from .models import Campaign

TEMPLATE_ROOTS = ("user", "event", "campaign", "linked")
USER_BUILTINS = ("id", "phone", "timezone", "country")
CAMPAIGN_FIELDS = ("name", "type", "owner", "labels")
MAX_RENDERED_CHARS = 10_000
LOOP_ITERATION_LIMIT = 10_000
MAX_RANGE_ITEMS = 1_000
OUTPUT_LIMIT_BYTES = 4 * MAX_RENDERED_CHARS  # UTF-8 bytes: room for MAX_RENDERED_CHARS of any script
LOCAL_NAMESPACE_LIMIT = 100_000
RENDER_BUDGET_SECONDS = 0.5
RENDER_WORKERS = 4
MAX_FILTER_VALUE = 1_000_000  # characters of a string, or items of a list, any filter may produce


class TemplateError(ValueError):
    """A template that does not parse."""


class TemplateLimitError(ResourceLimitError):
    """A template went past one of the sandbox limits (a range too large, the time budget)."""


# -- the sandbox -----------------------------------------------------------------------------

_BUDGET = threading.local()


@contextmanager
def render_budget(seconds: float = RENDER_BUDGET_SECONDS) -> Iterator[None]:
    """Renders on this thread inside the block must finish within `seconds` (nested budgets keep the
    earliest deadline). Checked cooperatively at every loop iteration and output write."""
    previous: float | None = getattr(_BUDGET, "deadline", None)
    deadline = time.monotonic() + seconds
    _BUDGET.deadline = deadline if previous is None else min(previous, deadline)
    try:
        yield
    finally:
        _BUDGET.deadline = previous


def _check_budget() -> None:
    deadline: float | None = getattr(_BUDGET, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimitError(f"rendering took longer than its {RENDER_BUDGET_SECONDS:g} s budget", token=None)


def _budgeted(items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        _check_budget()
        yield item


class _BoundedRange(RangeLiteral):
    """A range literal that refuses more than MAX_RANGE_ITEMS items (before any filter sees it)."""

    __slots__ = ()

    def _make_range(self, start: Any, stop: Any) -> range:
        items = super()._make_range(start, stop)
        if items.stop - items.start > MAX_RANGE_ITEMS:  # len() overflows on huge bounds
            raise TemplateLimitError(f"the range ({items.start}..{items.stop - 1}) has "
                                     f"{items.stop - items.start} items; the limit is {MAX_RANGE_ITEMS}",
                                     token=self.token)
        return items


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _expected_size(name: str, left: object, args: tuple[Any, ...]) -> int:
    """What `replace` and `join` would build, before they build it (the filters that multiply)."""
    if name == "replace" and isinstance(left, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = left.count(old) if old else len(left) + 1
        return len(left) + count * max(0, len(new) - len(old))
    if name == "join" and isinstance(left, list | tuple | range):
        separator = str(args[0]) if args else " "
        return len(left) * len(separator) + sum(len(str(item)) for item in left)
    return 0


class _BoundedFilter:
    """A filter that checks the render budget, refuses to build a string or list larger than
    MAX_FILTER_VALUE (checked beforehand for replace and join), and is otherwise the filter itself."""

    def __init__(self, name: str, func: Any) -> None:
        self._name = name
        self._func = func

    def __getattr__(self, attribute: str) -> Any:  # with_context, with_environment, validate
        return getattr(self._func, attribute)

    def __call__(self, left: object, *args: Any, **kwargs: Any) -> Any:
        _check_budget()
        expected = _expected_size(self._name, left, args)
        if expected > MAX_FILTER_VALUE:
            raise TemplateLimitError(f"{self._name} would build {expected} characters; the limit is "
                                     f"{MAX_FILTER_VALUE}", token=None)
        result = self._func(left, *args, **kwargs)
        if _size(result) > MAX_FILTER_VALUE:
            raise TemplateLimitError(f"{self._name} built a value of size {_size(result)}; the limit is "
                                     f"{MAX_FILTER_VALUE}", token=None)
        return result


class _BudgetedOutput(LimitedStringIO):
    def write(self, text: str) -> int:
        _check_budget()
        return super().write(text)


class _SandboxContext(RenderContext):
    @contextmanager
    def loop(self, namespace: Mapping[str, object], forloop: Any) -> Iterator[RenderContext]:
        forloop.it = _budgeted(forloop.it)  # ForLoop and TableRow iterate `it`
        with super().loop(namespace, forloop) as context:
            yield context

    def get_buffer(self, buf: TextIO | None = None) -> _BudgetedOutput:
        carry = buf.size if isinstance(buf, LimitedStringIO) else 0
        return _BudgetedOutput(limit=OUTPUT_LIMIT_BYTES - carry)


class _SandboxTemplate(BoundTemplate):
    """Every render holds a budget (the caller's, when it is shorter)."""

    context_class = _SandboxContext

    def render(self, *args: Any, **kwargs: Any) -> str:
        with render_budget():
            return super().render(*args, **kwargs)

    def _get_buffer(self) -> _BudgetedOutput:
        return _BudgetedOutput(limit=OUTPUT_LIMIT_BYTES)


def _expressions(expression: Expression) -> Iterator[Expression]:
    yield expression
    for child in expression.children():
        yield from _expressions(child)


def _nodes(template: BoundTemplate) -> Iterator[Any]:
    """Every node of a parsed template (no partials: there is no loader)."""
    static = RenderContext(template)
    nodes = list(template.nodes)
    while nodes:
        node = nodes.pop()
        yield node
        nodes.extend(node.children(static, include_partials=False))


def range_literals(template: BoundTemplate) -> Iterator[RangeLiteral]:
    """Every range literal of a parsed template."""
    for node in _nodes(template):
        for expression in node.expressions():
            yield from (e for e in _expressions(expression) if isinstance(e, RangeLiteral))


class SandboxEnvironment(Environment):
    """The one Liquid environment class of Herald: no loader, and the limits in the module docstring."""

    loop_iteration_limit = LOOP_ITERATION_LIMIT
    output_stream_limit = OUTPUT_LIMIT_BYTES
    context_depth_limit = 30
    local_namespace_limit = LOCAL_NAMESPACE_LIMIT
    template_class = _SandboxTemplate

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        self.filters = {name: _BoundedFilter(name, func) for name, func in self.filters.items()}

    def from_string(self, source: str, *args: Any, **kwargs: Any) -> BoundTemplate:
        template = super().from_string(source, *args, **kwargs)
        for literal in range_literals(template):
            literal.__class__ = _BoundedRange  # same slots: evaluation is bounded from now on
        return template


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Lenient sandbox (missing variables render empty): static analysis, plan estimates, validate's
    trial render."""
    return SandboxEnvironment()


@lru_cache(maxsize=4096)
def compile_template(source: str) -> BoundTemplate:
    try:
        return environment().from_string(source)
    except LiquidError as exc:
        raise TemplateError(str(exc)) from exc


def referenced_paths(source: str) -> set[str]:
    """Dotted variable paths the template reads from outside itself, e.g. {'user.first_name'}."""
    return set(_referenced_paths(source))


@lru_cache(maxsize=4096)
def _referenced_paths(source: str) -> frozenset[str]:
    """Cached: plan reviews ask once or twice per sampled user, and the analysis costs ~0.1 ms."""
    template = compile_template(source)
    try:
        return frozenset(template.global_variable_paths())
    except LiquidError as exc:  # static analysis follows {% include %}/{% render %}: there is nothing to load
        raise TemplateError(f"{str(exc).splitlines()[0]}: templates cannot include or render other templates "
                            "or files") from exc


class SendUndefined(FalsyStrictUndefined):
    """Strict for output and filters, false in conditions, replaced by `default`; lenient under linked."""

    force_liquid_default = True

    def __new__(cls, name: str, **kwargs: Any) -> Any:
        if name == "linked":
            return Undefined(name, **kwargs)
        return super().__new__(cls)


@lru_cache(maxsize=1)
def send_environment() -> Environment:
    """Strict sandbox for sending and previews: the same limits as environment()."""
    return SandboxEnvironment(undefined=SendUndefined)


@lru_cache(maxsize=4096)
def compile_for_send(source: str) -> BoundTemplate:
    """Compiled once per distinct source; per-user renders reuse it."""
    try:
        return send_environment().from_string(source)
    except LiquidError as exc:
        raise TemplateError(str(exc)) from exc


_OUTPUT = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = r"(?:user|event|campaign|linked)(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
_LITERAL = r"""'[^'\\]*'|"[^"\\]*"|-?[0-9]+"""
_FILTER = rf"\|\s*([a-z_]+)\s*(?::\s*((?:{_LITERAL})(?:\s*,\s*(?:{_LITERAL}))*))?\s*"
_SIMPLE_OUTPUT = re.compile(rf"^\s*({_PATH})\s*((?:{_FILTER})*)$")
_ONE_FILTER = re.compile(_FILTER)
_ONE_LITERAL = re.compile(_LITERAL)
# Context-free built-in filters the fast path may call (the very functions Liquid calls).
FAST_FILTERS = frozenset({
    "default", "upcase", "downcase", "capitalize", "slice", "truncate", "truncatewords", "append", "prepend",
    "strip", "lstrip", "rstrip", "replace", "replace_first", "remove", "remove_first", "size", "plus", "minus",
    "times", "divided_by", "modulo", "round", "ceil", "floor", "abs",
})
_SPECIAL_KEYS = frozenset({"size", "first", "last"})
_MISSING = object()
_UNSURE = object()


@dataclass(frozen=True)
class _FastOutput:
    path: tuple[str, ...]
    filters: tuple[tuple[str, Any, tuple[Any, ...]], ...]  # (name, function, literal args)


def _literal_value(text: str) -> Any:
    return text[1:-1] if text[:1] in "'\"" else int(text)


def _lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = context
    for key in path:
        if not isinstance(node, dict):
            return _UNSURE  # Liquid's .size/.first/.last and string/list access: leave it to Liquid
        if key not in node:
            return _UNSURE if key in _SPECIAL_KEYS else _MISSING
        node = node[key]
    return node


@dataclass(frozen=True)
class FastTemplate:
    """Text and `{{ a.b | filter: 'literal', 2 }}` outputs, rendered without building a Liquid context.

    Only the context-free built-in filters are used, and they are Liquid's own functions; when a value
    is missing (without a leading default), not a plain mapping lookup, or a filter raises, render()
    returns None and the caller renders with Liquid, so the output is always what Liquid renders.
    """

    parts: tuple[str | _FastOutput, ...]

    def render(self, context: Mapping[str, Any]) -> str | None:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(context, part.path)
            filters = part.filters
            if value is _UNSURE:
                return None
            if value is _MISSING:
                if not filters or filters[0][0] != "default":
                    return None  # strict: Liquid reports the undefined variable
                value = filters[0][2][0] if filters[0][2] else ""
                filters = filters[1:]
            try:
                for _, function, args in filters:
                    value = function(value, *args)
                out.append(to_liquid_string(value, False))
            except Exception:
                return None
        text = "".join(out)
        return None if "\r" in text else text  # Liquid's output buffer translates newlines; let it


def _fast_output(expression: str) -> _FastOutput | None:
    simple = _SIMPLE_OUTPUT.match(expression)
    if simple is None:
        return None
    filters = []
    for name, arguments in _ONE_FILTER.findall(simple.group(2)):
        if name not in FAST_FILTERS:
            return None
        args = tuple(_literal_value(a) for a in _ONE_LITERAL.findall(arguments or ""))
        filters.append((name, send_environment().filters[name], args))
    return _FastOutput(tuple(simple.group(1).split(".")), tuple(filters))


@lru_cache(maxsize=4096)
def compile_fast(source: str) -> FastTemplate | None:
    if "{%" in source or "{#" in source:
        return None
    parts: list[str | _FastOutput] = []
    position = 0
    for match in _OUTPUT.finditer(source):
        expression = match.group(1)
        output = None if expression.startswith("-") or expression.endswith("-") else _fast_output(expression)
        if output is None:
            return None
        if match.start() > position:
            parts.append(source[position:match.start()])
        parts.append(output)
        position = match.end()
    tail = source[position:]
    if "{{" in tail or "}}" in tail:
        return None
    if tail:
        parts.append(tail)
    return FastTemplate(tuple(parts))


def template_variable_source(expression: str) -> str:
    """templateVariables entries are expressions (user.name) or full templates ({{ user.name }})."""
    return expression if "{" in expression else "{{ " + expression + " }}"


@dataclass(frozen=True)
class Rendered:
    body: str
    template_variables: tuple[str, ...] = ()

    @cached_property
    def sms(self) -> SmsEncoding:
        """GSM-7 vs UCS-2 and segment count, analysed on first use."""
        return analyze(self.body)

    @property
    def encoding(self) -> str:
        return self.sms.encoding

    @property
    def segments(self) -> int:
        return self.sms.segments

    ok = True


@dataclass(frozen=True)
class RenderFailure:
    reason: str
    ok = False


def user_context(member: Member) -> dict[str, Any]:
    context = dict(member.properties)
    context.update(id=member.user_id, phone=member.phone, timezone=member.timezone, country=member.country)
    return context


def event_context(event: EventRecord | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    if isinstance(event, Mapping):
        return dict(event)
    ts = event.ts.isoformat() if isinstance(event.ts, datetime) else event.ts
    return {"name": event.name, "ts": ts, **event.properties}


@lru_cache(maxsize=1024)
def _campaign_context(name: str, type_: str, owner: str, labels: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"name": name, "type": type_, "owner": owner, "labels": dict(labels)}


def campaign_context(campaign: Campaign) -> dict[str, Any]:
    labels = tuple(sorted(campaign.metadata.labels.items()))
    return _campaign_context(campaign.name, campaign.spec.type, campaign.spec.owner, labels)


def render_context(campaign: Campaign, member: Member, *, event: EventRecord | Mapping[str, Any] | None = None,
                   linked: Mapping[str, Any] | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"user": user_context(member), "campaign": campaign_context(campaign),
                               "linked": dict(linked or {})}
    event_values = event_context(event)
    if event_values is not None:
        context["event"] = event_values
    return context


def _failure(exc: BaseException) -> RenderFailure:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RenderFailure(redact(message))


def render_source(source: str, context: Mapping[str, Any]) -> str:
    """Render one template strictly (raises on failure; render_message wraps this), within the
    render budget (the caller's, when it holds one)."""
    fast = compile_fast(source)
    if fast is not None:
        text = fast.render(context)
        if text is not None:
            return text
    return compile_for_send(source).render(**context)


def render_message(campaign: Campaign, member: Member, *, event: EventRecord | Mapping[str, Any] | None = None,
                   linked: Mapping[str, Any] | None = None) -> Rendered | RenderFailure:
    """The message body (and DLT template variables) for one user. Never raises: a user whose
    message cannot be rendered gets a RenderFailure naming the reason, to be recorded as a skip.
    Body and variables share one RENDER_BUDGET_SECONDS budget."""
    message = campaign.spec.message
    try:
        with render_budget():
            context = render_context(campaign, member, event=event, linked=linked)
            body = render_source(message.body, context)
            variables = tuple(render_source(template_variable_source(v), context)
                              for v in message.templateVariables)
    except Exception as exc:  # a per-user failure must never stop the run
        return _failure(exc)
    if not body.strip():
        return RenderFailure("the message rendered empty")
    if len(body) > MAX_RENDERED_CHARS:
        return RenderFailure(f"the message rendered to {len(body)} characters; the limit is {MAX_RENDERED_CHARS}")
    return Rendered(body, variables)


_RENDER_POOL = ThreadPoolExecutor(max_workers=RENDER_WORKERS, thread_name_prefix="herald-render")


@lru_cache(maxsize=4096)
def _loops(source: str) -> bool:
    """Can rendering `source` repeat work (a for/tablerow loop or a range)? Unparsable: render inline
    (it fails at once)."""
    try:
        template = compile_for_send(source)
    except TemplateError:
        return False
    if any(type(node) in (ForNode, TablerowNode) for node in _nodes(template)):
        return True
    return next(range_literals(template), None) is not None


def _renders_inline(campaign: Campaign) -> bool:
    """No loops and no ranges: the work is bounded by the template's length (and the data's size), so
    rendering on the event loop costs no more than the thread hop it would save (~0.1 ms)."""
    message = campaign.spec.message
    sources = [message.body, *(template_variable_source(v) for v in message.templateVariables)]
    return not any(_loops(source) for source in sources)


async def render_message_async(campaign: Campaign, member: Member, *,
                               event: EventRecord | Mapping[str, Any] | None = None,
                               linked: Mapping[str, Any] | None = None) -> Rendered | RenderFailure:
    """render_message for the daemon: Liquid runs on a small worker pool of its own, never on the
    event loop nor on the pool that store calls use (templates without tags render inline: bounded by
    the body's length). The worker holds the render budget, so it answers within it."""
    if _renders_inline(campaign):
        return render_message(campaign, member, event=event, linked=linked)
    job = partial(render_message, campaign, member, event=event, linked=linked)
    return await asyncio.get_running_loop().run_in_executor(_RENDER_POOL, job)


# -- validate-time checks --------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateProblem:
    field: tuple[str | int, ...]  # location under the campaign document, e.g. ("spec", "message", "body")
    message: str
    error: bool = False  # a template the daemon would refuse (limits); other problems are warnings


_LIMIT_DETAILS = {
    "LoopIterationLimitError": f"at most {LOOP_ITERATION_LIMIT} loop iterations; nested loops multiply",
    "OutputStreamLimitError": f"at most {OUTPUT_LIMIT_BYTES} bytes of output",
    "LocalNamespaceLimitError": f"at most {LOCAL_NAMESPACE_LIMIT} bytes of assigned variables",
    "ContextDepthError": "too deeply nested",
}


def _limit_message(exc: ResourceLimitError) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = _LIMIT_DETAILS.get(type(exc).__name__)
    return f"template exceeds a limit: {text}" + (f" ({detail})" if detail else "")


def limit_problem(source: str, campaign: Campaign) -> str | None:
    """Why the sandbox would refuse this template, found without any user's data: a range literal
    over MAX_RANGE_ITEMS, or a limit reached by a trial render (missing variables empty, the real
    budget). None when it stays within the limits."""
    try:
        template = compile_template(source)
    except TemplateError:
        return None  # reported as a parse error
    for literal in range_literals(template):
        if isinstance(literal, _BoundedRange) and isinstance(literal.start, IntegerLiteral) \
                and isinstance(literal.stop, IntegerLiteral):
            try:
                literal._make_range(literal.start.value, literal.stop.value)
            except TemplateLimitError as exc:
                return _limit_message(exc)
    context = {"user": {}, "event": {}, "linked": {}, "campaign": campaign_context(campaign)}
    try:
        template.render(**context)
    except ResourceLimitError as exc:
        return _limit_message(exc)
    except Exception:  # data-dependent failures (a filter on a missing value) are not limit problems
        return None
    return None


def campaign_templates(campaign: Campaign) -> list[tuple[tuple[str | int, ...], str]]:
    message = campaign.spec.message
    sources: list[tuple[tuple[str | int, ...], str]] = [(("spec", "message", "body"), message.body)]
    sources += [(("spec", "message", "templateVariables", i), template_variable_source(v))
                for i, v in enumerate(message.templateVariables)]
    sources += [(("spec", "message", "linkedContent", i, "url"), s.url)
                for i, s in enumerate(message.linkedContent)]
    return sources


def _has_default(source: str, index: int) -> bool:
    """Is the variable starting at `index` piped straight into the default filter?"""
    return re.match(r"[\w.\[\]'\"]+\s*\|\s*default\b", source[index:]) is not None


def template_problems(campaign: Campaign, *, user_properties: Collection[str] | None = None
                      ) -> list[TemplateProblem]:
    """Strict check of every template of a campaign, for `herald validate`.

    Templates past a sandbox limit (errors), unknown roots, event.* in a past_behavior campaign,
    undeclared linked sources, unknown campaign fields; with `user_properties` (known property names, e.g. from the store) also user.* names
    that no user has and that have no `default`. Linked content may only read user/campaign data.
    """
    problems: list[TemplateProblem] = []
    linked_names = {s.name for s in campaign.spec.message.linkedContent}
    for location, source in campaign_templates(campaign):
        try:
            analysis = compile_for_send(source).analyze()
        except TemplateNotFoundError as exc:  # analysis follows {% include %}/{% render %}: nothing to load
            problems.append(TemplateProblem(location, f"template does not parse: {str(exc).splitlines()[0]}: "
                                                      "templates cannot include or render other templates or files"))
            continue
        except (TemplateError, LiquidError) as exc:
            problems.append(TemplateProblem(location, f"template does not parse: {str(exc).splitlines()[0]}"))
            continue
        limit = limit_problem(source, campaign)
        if limit:
            problems.append(TemplateProblem(location, limit, error=True))
            continue
        is_url = location[2] == "linkedContent"
        for uses in analysis.globals.values():
            for variable in uses:
                path = ".".join(str(s) for s in variable.segments)
                reason = _variable_problem(campaign, path, linked_names, user_properties, is_url,
                                           _has_default(source, variable.span.index))
                if reason:
                    problems.append(TemplateProblem(location, reason))
                    break
    return problems


def _variable_problem(campaign: Campaign, path: str, linked_names: set[str],
                      user_properties: Collection[str] | None, is_url: bool, defaulted: bool) -> str | None:
    root, _, rest = path.partition(".")
    first = rest.split(".")[0] if rest else ""
    if root not in TEMPLATE_ROOTS:
        return f"'{path}' is not defined (use user.*, event.*, campaign.* or linked.*)"
    if root == "event" and campaign.spec.type != "live":
        return f"'{path}' needs an event, but past_behavior campaigns have none"
    if root == "linked":
        if is_url:
            return f"'{path}': a linked-content URL cannot read linked content"
        if first not in linked_names:
            return f"'{path}' refers to linked content that is not declared"
    if root == "campaign" and first not in CAMPAIGN_FIELDS:
        return f"'{path}' is not a campaign field ({', '.join(CAMPAIGN_FIELDS)})"
    if (root == "user" and user_properties is not None and first and first not in USER_BUILTINS
            and first not in user_properties and not defaulted):
        return f"'{path}': no user has property '{first}' (add a default, e.g. {{{{ {path} | default: '' }}}})"
    return None
