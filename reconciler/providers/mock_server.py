"""A local stand-in for every provider Herald speaks to, for tests, demos and benchmarks.

Each provider's send endpoint lives under /{type}/… with the real path and answer format (a generic
provider under /generic_http/{provider name}/{its url path}). Every accepted message is recorded with
the fields the provider would have seen, its Idempotency-Key and the time it arrived.

By default the mock behaves like the real APIs (none of which documents deduplication):
- it does NOT deduplicate: a resend is a second message, recorded twice (tests count it as doubled);
- it DOES finish requests whose client gave up: with latency injected, a client that times out and
  hangs up still gets its message recorded (counted `late`), as a real provider would have sent it;
- it serves Twilio's Message list (GET …/Messages.json, filtered by To/From/DateSent, paged, every
  field the twilio SDK reads) and Vonage's Reports API records (GET /vonage/v2/reports/records), where
  a message shows up `visibility_delay` seconds after it was taken.
MockState(dedupe=True, finish_abandoned=False) is the old idempotent provider: a request repeating an
Idempotency-Key already answered gets the first answer again (counted `duplicates`), and a request
whose client hung up is dropped unprocessed (counted `abandoned`).

Control endpoints:
  GET  /_mock/messages?provider=NAME&to=NUMBER   recorded messages
  GET  /_mock/stats                              per-provider request/message/duplicate/abandoned counts
  POST /_mock/faults  {"provider": NAME, "error_rate": 0.5, "status": 503, "latency_ms": 200,
                       "down": true, "rate_limited": true, "retry_after": 2, "malformed": true,
                       "accept": true, "times": N, "clear": true}
  POST /_mock/mode    {"dedupe": false, "finish_abandoned": true, "visibility_delay": 0.5}
  POST /_mock/reset                              forget messages, faults and counters

NAME is the provider type (twilio, vonage, msg91, exotel, netcore) or a generic provider's name.
`accept: true` makes an injected error come AFTER the message was taken (a 500 from a handler that
crashed late): the message is recorded and the client sees the error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..encoding import analyze

PHONE = re.compile(r"^\+?[0-9]{7,15}$")
BODY_KEYS = ("Body", "Text", "text", "body", "message", "msg", "content")
JSON_TYPE = "application/json"
XML_TYPE = "text/xml; charset=utf-8"


@dataclass
class Fault:
    error_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    down: bool = False
    rate_limited: bool = False
    retry_after: float = 1.0
    malformed: bool = False
    accept: bool = False  # injected errors come after the message was recorded
    times: int | None = None  # only the next N requests; None: until cleared

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fault = cls(**known)
        if fault.error_rate and "status" not in data:
            fault.status = 500
        return fault


@dataclass
class Received:
    provider: str  # type, or the generic provider's name
    type: str
    to: str
    body: str
    idempotency_key: str | None
    provider_message_id: str
    received_at: float
    fields: dict[str, Any] = field(default_factory=dict)
    segments: int = 1
    account: str = ""  # the account it was sent on (Twilio, Exotel: the path's AccountSid)
    visible_at: float = 0.0  # when the provider's lookup starts showing it
    arrived_at: float = 0.0  # the real wall clock at arrival (rates are measured on it; received_at follows `clock`)


@dataclass
class Answer:
    status: int
    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return Response(self.content, status_code=self.status, media_type=self.media_type, headers=self.headers)


class Rejected(Exception):
    """The request is malformed for this provider: answer with the provider's own error format."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class MockState:
    """What the mock received; thread-safe so tests can read it while the server runs elsewhere."""

    def __init__(self, seed: int | None = None, *, dedupe: bool = False, finish_abandoned: bool = True,
                 visibility_delay: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.Lock()
        self.clock = clock  # epoch seconds stamped on messages and read by lookups (a test's FakeClock)
        self.rng = random.Random(seed)
        self.dedupe = dedupe  # replay the first answer to a repeated Idempotency-Key
        self.finish_abandoned = finish_abandoned  # a request whose client hung up is still processed
        self.visibility_delay = visibility_delay  # seconds before a taken message shows in lookups
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.messages: list[Received] = []
            self.by_to: dict[str, list[Received]] = {}  # lookups filter by recipient: no scan of every message
            self.answers: dict[tuple[str, str], Answer] = {}
            self.faults: dict[str, Fault] = {}
            self.counters: dict[str, Counter[str]] = {}
            self.opted_out: set[tuple[str, str]] = set()  # (provider type, number) that texted STOP

    def count(self, provider: str, what: str, n: int = 1) -> None:
        with self.lock:
            self.counters.setdefault(provider, Counter())[what] += n

    def fault_for(self, provider: str, type_: str) -> Fault | None:
        with self.lock:
            key = provider if provider in self.faults else type_ if type_ in self.faults else None
            if key is None:
                return None
            fault = self.faults[key]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[key]
            return fault

    def replay(self, provider: str, key: str | None) -> Answer | None:
        if key is None or not self.dedupe:
            return None
        with self.lock:
            return self.answers.get((provider, key))

    def accept(self, provider: str, key: str | None, answer: Answer, received: list[Received],
               scope: str | None = None) -> None:
        now = self.clock()
        for message in received:
            message.received_at, message.visible_at = now, now + self.visibility_delay
            message.arrived_at = time.time()
        with self.lock:
            self.messages.extend(received)
            for message in received:
                self.by_to.setdefault(message.to, []).append(message)
            if key is not None and self.dedupe:
                self.answers[(scope or provider, key)] = answer
            self.counters.setdefault(provider, Counter())["messages"] += len(received)

    def query(self, provider: str | None = None, to: str | None = None) -> list[Received]:
        with self.lock:
            found = list(self.by_to.get(to, ())) if to else list(self.messages)
        if provider:
            found = [m for m in found if provider in (m.provider, m.type)]
        return found

    def stats(self) -> dict[str, Any]:
        with self.lock:
            providers = {name: dict(counter) for name, counter in self.counters.items()}
        total: Counter[str] = Counter()
        for counter in providers.values():
            total.update(counter)
        return {"providers": providers, "total": dict(total)}


def _new_id(prefix: str = "", length: int = 32) -> str:
    return prefix + uuid.uuid4().hex[:length]


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(data).encode(), JSON_TYPE, headers or {})


CREDENTIAL_FIELDS = frozenset({"api_secret", "password", "authkey", "sig"})


def _record(provider: str, type_: str, to: str, body: str, key: str | None, message_id: str,
            fields: dict[str, Any]) -> Received:
    """Credentials are masked: the records are served over HTTP and end up in test output."""
    shown = {k: ("***" if k in CREDENTIAL_FIELDS and v else v) for k, v in fields.items()}
    return Received(provider, type_, to, body, key, message_id, time.time(), shown, analyze(body).segments)


async def _form(request: Request, raw: bytes) -> dict[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        data = json.loads(raw or b"{}")
        return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


# -- per-provider behaviour -----------------------------------------------------------------
# Each handler parses one request and returns (answer, received messages) or raises Rejected.

Handled = tuple[Answer, list[Received]]


async def _twilio(request: Request, raw: bytes, key: str | None) -> Handled:
    def error(status: int, code: int, message: str) -> Rejected:
        return Rejected(_json(status, {"code": code, "message": message, "status": status,
                                       "more_info": f"https://www.twilio.com/docs/errors/{code}"}))

    if not request.headers.get("authorization", "").startswith("Basic "):
        raise error(401, 20003, "Authenticate")
    form = await _form(request, raw)
    to, body = form.get("To", ""), form.get("Body", "")
    if not to.startswith("+") or not PHONE.match(to):
        raise error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if not form.get("From") and not form.get("MessagingServiceSid"):
        raise error(400, 21603, "The 'From' number is required.")
    if not body:
        raise error(400, 21602, "Message body is required.")
    mock: MockState | None = getattr(request.app.state, "mock", None)
    if mock is not None and ("twilio", to) in mock.opted_out:  # Twilio's own STOP handling
        raise error(400, 21610, "Attempt to send to unsubscribed recipient")
    sid = _new_id("SM")
    account = request.path_params["account"]
    received = _record("twilio", "twilio", to, body, key, sid, form)
    received.account = account
    return _json(201, _twilio_message(received)), [received]


def _twilio_message(message: Received, now: float | None = None) -> dict[str, Any]:
    """A Message resource as Twilio shows it (every field twilio-python's MessageInstance reads); once
    `now` is a second past its creation it reads as sent, with a date_sent."""
    sid, account = message.provider_message_id, message.account
    sent = now is not None and now >= message.received_at + 1
    return {
        "account_sid": account, "api_version": "2010-04-01", "body": message.body,
        "date_created": formatdate(message.received_at, usegmt=True),
        "date_sent": formatdate(message.received_at + 1, usegmt=True) if sent else None,
        "date_updated": formatdate(message.received_at + (1 if sent else 0), usegmt=True),
        "direction": "outbound-api", "error_code": None, "error_message": None,
        "from": message.fields.get("From"), "messaging_service_sid": message.fields.get("MessagingServiceSid"),
        "num_media": "0", "num_segments": str(message.segments), "price": "-0.00790" if sent else None,
        "price_unit": "USD", "sid": sid, "status": "sent" if sent else "queued", "to": message.to,
        "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json",
                             "feedback": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Feedback.json"},
    }


TWILIO_DATE_FILTERS = {"DateSent": "=", "DateSent<": "<", "DateSent>": ">"}


def _twilio_list(state: MockState) -> Callable[..., Any]:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages.json: To, From and DateSent filters (a GMT date,
    YYYY-MM-DD, or with < / > for on-or-before / on-or-after), newest first, PageSize (max 1000),
    Page + PageToken paging with next_page_uri. Only messages past their visibility delay show."""
    async def endpoint(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Basic "):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        account, query = request.path_params["account"], request.query_params
        state.count("twilio", "lookups")
        now = state.clock()
        found = [m for m in state.query("twilio", query.get("To")) if m.account == account and m.visible_at <= now
                 and query.get("From", m.fields.get("From")) == m.fields.get("From")]
        for name, op in TWILIO_DATE_FILTERS.items():
            if name in query:  # date_sent is null until sent: an unsent message never matches
                found = [m for m in found if _date_matches(m, now, query[name], op)]
        found.sort(key=lambda m: m.received_at, reverse=True)
        size = max(1, min(1000, int(query.get("PageSize", "50"))))
        page = int(query.get("Page", "0"))
        chunk = found[page * size:(page + 1) * size]
        base = f"/2010-04-01/Accounts/{account}/Messages.json"
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageToken", "PageSize")}

        def uri(number: int) -> str:
            params = {**filters, "PageSize": str(size), "Page": str(number)}
            if number:
                params["PageToken"] = f"PA{_new_id(length=30)}"
            return f"{base}?{urlencode(params)}"

        more = (page + 1) * size < len(found)
        return JSONResponse({
            "messages": [_twilio_message(m, now) for m in chunk], "end": page * size + max(0, len(chunk) - 1),
            "first_page_uri": uri(0), "next_page_uri": uri(page + 1) if more else None, "page": page,
            "page_size": size, "previous_page_uri": uri(page - 1) if page else None, "start": page * size,
            "uri": uri(page),
        })

    return endpoint


def _twilio_fetch(state: MockState) -> Callable[..., Any]:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json: one Message resource, or Twilio's
    20404 error (also for another account's message)."""
    async def endpoint(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Basic "):
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        account, sid = request.path_params["account"], request.path_params["sid"]
        with state.lock:
            found = next((m for m in state.messages if m.provider_message_id == sid and m.account == account
                          and m.type == "twilio"), None)
        if found is None:
            path = f"/2010-04-01/Accounts/{account}/Messages/{sid}.json"
            return JSONResponse({"code": 20404, "message": f"The requested resource {path} was not found",
                                 "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404},
                                status_code=404)
        return JSONResponse(_twilio_message(found, state.clock()))

    return endpoint


def _vonage_basic(request: Request, form: dict[str, str]) -> dict[str, str]:
    """The official SDK sends api_key:api_secret as HTTP Basic auth instead of form fields."""
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic ") or form.get("api_key"):
        return form
    try:
        key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return form
    return {**form, "api_key": key, "api_secret": secret}


def _vonage_records(state: MockState) -> Callable[..., Any]:
    """GET /v2/reports/records (Vonage Reports API, synchronous): product=SMS, direction=outbound,
    account_id (the api_key the messages were sent with), date_start/date_end (ISO 8601, at most 24 h),
    include_message. Only messages past the visibility delay show."""
    async def endpoint(request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Basic "):
            return JSONResponse({"type": "about:blank", "title": "Unauthorized"}, status_code=401)
        query = request.query_params
        try:
            start = datetime.fromisoformat(query["date_start"].replace("Z", "+00:00")).timestamp()
            end = datetime.fromisoformat(query["date_end"].replace("Z", "+00:00")).timestamp()
            if query["product"] != "SMS" or query["direction"] != "outbound" or not query["account_id"]:
                raise ValueError("product=SMS, direction=outbound and account_id are required")
            if end - start > 24 * 3600:
                raise ValueError("date range longer than 24 hours")
        except (KeyError, ValueError) as exc:
            return JSONResponse({"type": "about:blank", "title": "Bad Request", "detail": str(exc)}, status_code=400)
        state.count("vonage", "lookups")
        now = state.clock()
        found = [m for m in state.query("vonage") if m.fields.get("api_key") == query["account_id"]
                 and start <= m.received_at < end and m.visible_at <= now]
        with_body = query.get("include_message") == "true"
        records = [{
            "account_id": m.fields.get("api_key"), "message_id": m.provider_message_id,
            "client_ref": m.fields.get("client-ref") or None, "direction": "outbound",
            "from": m.fields.get("from"), "to": m.to.lstrip("+"), "network": "23410", "status": "delivered",
            "date_received": datetime.fromtimestamp(m.received_at, UTC).isoformat(timespec="milliseconds"),
            "currency": "EUR", "total_price": "0.03330000", **({"message_body": m.body} if with_body else {}),
        } for m in found]
        return JSONResponse({"request_status": "SUCCESS", "items_count": len(records), "records": records,
                             "received_at": datetime.fromtimestamp(now, UTC).isoformat(),
                             "_links": {"self": {"href": str(request.url)}}})

    return endpoint


def _date_matches(message: Received, now: float, value: str, op: str) -> bool:
    if now < message.received_at + 1:
        return False  # not sent yet: no date_sent
    sent_day = time.strftime("%Y-%m-%d", time.gmtime(message.received_at + 1))
    day = value[:10]
    return sent_day == day if op == "=" else sent_day <= day if op == "<" else sent_day >= day


async def _vonage(request: Request, raw: bytes, key: str | None) -> Handled:
    form = _vonage_basic(request, await _form(request, raw))

    def error(status: str, text: str) -> Rejected:
        return Rejected(_json(200, {"message-count": "1", "messages": [{"status": status, "error-text": text}]}))

    for param in ("api_key", "from", "to", "text"):
        if not form.get(param):
            raise error("2", f"Missing {param} param")
    if not form.get("api_secret") and not form.get("sig"):
        raise error("2", "Missing api_secret param")
    if not PHONE.match(form["to"]) or form["to"].startswith("+"):
        raise error("3", "Invalid to param")
    message_id = _new_id(length=16).upper()
    parts = analyze(form["text"]).segments
    entries = [{"to": form["to"], "message-id": message_id if i == 0 else _new_id(length=16).upper(),
                "status": "0", "remaining-balance": "10.00000000", "message-price": "0.03330000",
                "network": "23410", "client-ref": form.get("client-ref", "")} for i in range(parts)]
    answer = _json(200, {"message-count": str(parts), "messages": entries})
    return answer, [_record("vonage", "vonage", "+" + form["to"], form["text"], key, message_id, form)]


async def _msg91(request: Request, raw: bytes, key: str | None) -> Handled:
    def error(status: int, message: str) -> Rejected:
        return Rejected(_json(status, {"message": message, "type": "error"}))

    if not request.headers.get("authkey"):
        raise error(401, "AuthenticationFailure")
    try:
        data = json.loads(raw)
    except ValueError:
        raise error(400, "Invalid JSON") from None
    recipients = data.get("recipients") if isinstance(data, dict) else None
    if not data.get("template_id"):
        raise error(400, "template_id missing")
    if not isinstance(recipients, list) or not recipients:
        raise error(400, "recipients missing")
    request_id = _new_id(length=24)
    received = []
    for recipient in recipients:
        mobiles = str(recipient.get("mobiles", "")) if isinstance(recipient, dict) else ""
        if not mobiles.isdigit():
            raise error(400, f"Invalid mobile number {mobiles}")
        variables = [v for k, v in sorted(recipient.items()) if k != "mobiles"]
        fields = {"template_id": data["template_id"], "short_url": data.get("short_url"), **recipient}
        received.append(_record("msg91", "msg91", "+" + mobiles, " ".join(map(str, variables)), key,
                                request_id, fields))
    return _json(200, {"message": request_id, "type": "success"}), received


async def _exotel(request: Request, raw: bytes, key: str | None) -> Handled:
    def error(status: int, message: str, code: int) -> Rejected:
        return Rejected(_json(status, {"RestException": {"Status": status, "Message": message, "Code": code}}))

    if not request.headers.get("authorization", "").startswith("Basic "):
        raise error(401, "Authentication failed. Invalid API Key or Token.", 401)
    form = await _form(request, raw)
    for param in ("From", "To", "Body"):
        if not form.get(param):
            raise error(400, f"Missing parameter {param}", 400)
    if not PHONE.match(form["To"]):
        raise error(400, f"Invalid To number {form['To']}", 400)
    sid = _new_id()
    account = request.path_params["account"]
    answer = _json(200, {"SMSMessage": {
        "Sid": sid, "AccountSid": account, "From": f"/{account}", "To": form["To"], "Body": form["Body"],
        "Status": "queued", "DetailedStatus": "PENDING_TO_OPERATOR", "DetailedStatusCode": 21010,
        "SmsUnits": None, "Direction": "outbound-api", "Uri": f"/v1/Accounts/{account}/SMS/Messages/{sid}.json",
    }})
    return answer, [_record("exotel", "exotel", form["To"], form["Body"], key, sid, form)]


async def _netcore(request: Request, raw: bytes, key: str | None) -> Handled:
    def error(code: str, desc: str, status: int = 200) -> Rejected:
        xml = f"<RESULT><REQUEST-ERROR><ERROR><CODE>{code}</CODE><DESC>{desc}</DESC></ERROR></REQUEST-ERROR></RESULT>"
        return Rejected(Answer(status, xml.encode(), XML_TYPE))

    form = await _form(request, raw)
    if not (form.get("feedid") and form.get("username") and form.get("password")):
        raise error("102", "Invalid username or password")
    if not form.get("Text"):
        raise error("104", "Text missing")
    to = form.get("To", "")
    if not to.isdigit() or not PHONE.match(to):
        xml = ("<RESULT REQID='0'><MID SUBMITDATE='' ID='1' TAG='' TID=''><ERROR><CODE>108</CODE>"
               f"<DESC>Invalid mobile number {to}</DESC></ERROR></MID></RESULT>")
        raise Rejected(Answer(200, xml.encode(), XML_TYPE))
    request_id, tid = str(random.randrange(10**9, 10**10)), str(random.randrange(10**11, 10**12))
    submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    xml = f"<RESULT REQID='{request_id}'><MID SUBMITDATE='{submitted}' ID='1' TAG='' TID='{tid}'></MID></RESULT>"
    return Answer(200, xml.encode(), XML_TYPE), [_record("netcore", "netcore", "+" + to, form["Text"], key, tid, form)]


def _generic_entries(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Find the recipients in a generic request: a list of objects (array batching), a comma-joined
    number field (comma batching), or the request itself (one recipient)."""
    for key, value in payload.items():
        if isinstance(value, str) and value.startswith("[{"):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            shared = {k: v for k, v in payload.items() if k != key}
            return [{**shared, **entry} for entry in value]
    for name, value in payload.items():
        if isinstance(value, str) and "," in value and all(PHONE.match(p) for p in value.split(",")):
            return [{**payload, name: number} for number in value.split(",")]
    return [payload]


def _phone_of(entry: dict[str, Any]) -> str | None:
    return next((str(v) for v in entry.values() if isinstance(v, str) and PHONE.match(v)), None)


async def _generic(request: Request, raw: bytes, key: str | None) -> Handled:
    name = request.path_params["name"]
    payload: dict[str, Any] = dict(request.query_params)
    if raw:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(raw)
            except ValueError:
                raise Rejected(_json(400, {"error": "invalid JSON"})) from None
            payload.update(data if isinstance(data, dict) else {"items": data})
        else:
            payload.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    entries = _generic_entries(payload)
    received, answers = [], []
    for entry in entries:
        to = _phone_of(entry)
        if to is None:
            raise Rejected(_json(400, {"error": "no recipient number in request"}))
        body = next((str(entry[k]) for k in BODY_KEYS if k in entry), "")
        message_id = _new_id("gm-", 24)
        received.append(_record(name, "generic_http", to if to.startswith("+") else "+" + to, body, key,
                                message_id, entry))
        answers.append({"id": message_id, "to": to})
    first = answers[0]["id"]
    batch_id = _new_id("batch-", 24)
    answer = _json(200, {"id": first, "data": {"id": first}, "batch_id": batch_id, "status": "accepted",
                         "messages": answers})
    return answer, received


# -- fault injection ------------------------------------------------------------------------

FAULT_BODIES: dict[str, Callable[[int, str], Answer]] = {
    "twilio": lambda s, m: _json(s, {"code": 20429 if s == 429 else 20500, "message": m, "status": s}),
    "vonage": lambda s, m: _json(s, {"type": "about:blank", "title": m, "detail": m}),
    "msg91": lambda s, m: _json(s, {"message": m, "type": "error"}),
    "exotel": lambda s, m: _json(s, {"RestException": {"Status": s, "Message": m, "Code": s}}),
    "netcore": lambda s, m: Answer(s, f"<RESULT><ERROR>{m}</ERROR></RESULT>".encode(), XML_TYPE),
    "generic_http": lambda s, m: _json(s, {"error": m}),
}


async def _client_still_there(request: Request, seconds: float) -> bool:
    """Wait, watching for the client hanging up (its timeout) before we would have answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        await asyncio.sleep(min(0.005, remaining))
        if await request.is_disconnected():
            return False
    return not await request.is_disconnected()


async def _apply_fault(state: MockState, provider: str, type_: str, fault: Fault | None) -> Answer | None:
    """The fault's answer instead of the provider's (None: no fault fires for this request)."""
    if fault is None:
        return None
    body = FAULT_BODIES[type_]
    if fault.down:
        state.count(provider, "faulted")
        return body(503, "Service Unavailable")
    if fault.rate_limited:
        state.count(provider, "faulted")
        answer = body(429, "Too Many Requests")
        answer.headers["Retry-After"] = f"{fault.retry_after:g}"
        return answer
    if fault.error_rate and state.rng.random() < fault.error_rate:
        state.count(provider, "faulted")
        return body(fault.status, "Injected failure")
    return None


def _handler(type_: str, handle: Callable[[Request, bytes, str | None], Any], state: MockState) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        provider = request.path_params.get("name", type_)
        state.count(provider, "requests")
        raw = await request.body()
        key = request.headers.get("idempotency-key")
        fault = state.fault_for(provider, type_)
        began = time.monotonic()
        if fault is not None and fault.latency_ms and not await _client_still_there(request, fault.latency_ms / 1000):
            state.count(provider, "abandoned")  # the client gave up waiting (its timeout) …
            if not state.finish_abandoned:
                return Answer(499, b"", "text/plain").response()
            state.count(provider, "late")  # … but a real provider carries on with the request, to the end
            await asyncio.sleep(max(0.0, began + fault.latency_ms / 1000 - time.monotonic()))
        faulted = await _apply_fault(state, provider, type_, fault)
        if faulted is not None and not (fault is not None and fault.accept):
            return faulted.response()
        scope = f"{provider}/{request.path_params.get('account', '')}"  # two accounts never share keys
        previous = state.replay(scope, key)
        if previous is not None:
            state.count(provider, "duplicates")
            return previous.response()
        try:
            answer, received = await handle(request, raw, key)
        except Rejected as rejected:
            state.count(provider, "rejected")
            return rejected.answer.response()
        if fault is not None and fault.malformed:
            answer = Answer(200, b"<<not what you expected", "text/plain")
        state.accept(provider, key, answer, received, scope)
        return (faulted or answer).response()

    return endpoint


# -- control --------------------------------------------------------------------------------

TWILIO_STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
TWILIO_START_WORDS = frozenset({"START", "UNSTOP", "YES"})


def _twilio_inbound_form(sender: str, to: str, body: str, account: str) -> dict[str, str]:
    """The fields Twilio POSTs to a number's incoming-message webhook."""
    sid = _new_id("SM")
    return {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": body,
            "FromCountry": "", "To": to, "ToZip": "", "NumSegments": str(analyze(body).segments),
            "MessageSid": sid, "AccountSid": account, "From": sender, "ApiVersion": "2010-04-01"}

def _control_routes(state: MockState) -> list[Route]:
    async def messages(request: Request) -> Response:
        found = state.query(request.query_params.get("provider"), request.query_params.get("to"))
        return JSONResponse({"count": len(found), "messages": [asdict(m) for m in found]})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def faults(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            provider = str(data["provider"])
            fault = Fault.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
        with state.lock:
            if data.get("clear"):
                state.faults.pop(provider, None)
            else:
                state.faults[provider] = fault
            current = {k: asdict(v) for k, v in state.faults.items()}
        return JSONResponse({"faults": current})

    async def inbound(request: Request) -> Response:
        """A reply texted to a Twilio number: {"from", "to", "body", "url", "auth_token"[, "account"]}.
        Answers the webhook Twilio would POST to `url` (form and X-Twilio-Signature), after applying
        Twilio's default opt-out handling: STOP words block later sends to that number (21610),
        START words lift the block."""
        try:
            data = json.loads(await request.body())
            sender, to, body, url = str(data["from"]), str(data["to"]), str(data["body"]), str(data["url"])
            token, account = str(data["auth_token"]), str(data.get("account", "AC" + "0" * 31 + "1"))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad inbound: {exc}"}, status_code=400)
        word = body.strip().upper()
        form = _twilio_inbound_form(sender, to, body, account)
        if word in TWILIO_STOP_WORDS:
            form["OptOutType"] = "STOP"
            with state.lock:
                state.opted_out.add(("twilio", sender))
        elif word in TWILIO_START_WORDS:
            form["OptOutType"] = "START"
            with state.lock:
                state.opted_out.discard(("twilio", sender))
        from ..http.receipts import twilio_signature

        return JSONResponse({"url": url, "form": form,
                             "headers": {"X-Twilio-Signature": twilio_signature(token, url, form),
                                         "Content-Type": "application/x-www-form-urlencoded"}})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    async def mode(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            with state.lock:
                state.dedupe = bool(data.get("dedupe", state.dedupe))
                state.finish_abandoned = bool(data.get("finish_abandoned", state.finish_abandoned))
                state.visibility_delay = float(data.get("visibility_delay", state.visibility_delay))
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"bad mode: {exc}"}, status_code=400)
        return JSONResponse({"dedupe": state.dedupe, "finish_abandoned": state.finish_abandoned,
                             "visibility_delay": state.visibility_delay})

    return [
        Route("/_mock/messages", messages, methods=["GET"]),
        Route("/_mock/stats", stats, methods=["GET"]),
        Route("/_mock/faults", faults, methods=["POST"]),
        Route("/_mock/reset", reset, methods=["POST"]),
        Route("/_mock/mode", mode, methods=["POST"]),
        Route("/_mock/inbound", inbound, methods=["POST"]),
    ]


def create_app(state: MockState | None = None) -> Starlette:
    state = state or MockState()
    routes = [
        Route("/twilio/2010-04-01/Accounts/{account}/Messages.json", _handler("twilio", _twilio, state),
              methods=["POST"]),
        Route("/twilio/2010-04-01/Accounts/{account}/Messages.json", _twilio_list(state), methods=["GET"]),
        Route("/twilio/2010-04-01/Accounts/{account}/Messages/{sid}.json", _twilio_fetch(state), methods=["GET"]),
        Route("/vonage/sms/json", _handler("vonage", _vonage, state), methods=["POST"]),
        Route("/vonage/v2/reports/records", _vonage_records(state), methods=["GET"]),
        Route("/msg91/api/v5/flow/", _handler("msg91", _msg91, state), methods=["POST"]),
        Route("/msg91/api/v5/flow", _handler("msg91", _msg91, state), methods=["POST"]),
        Route("/exotel/v1/Accounts/{account}/Sms/send.json", _handler("exotel", _exotel, state), methods=["POST"]),
        Route("/netcore/BulkSms/SingleMsgApi", _handler("netcore", _netcore, state), methods=["POST", "GET"]),
        Route("/generic_http/{name}/{path:path}", _handler("generic_http", _generic, state),
              methods=["GET", "POST", "PUT", "PATCH"]),
        *_control_routes(state),
    ]
    app = Starlette(routes=routes)
    app.state.mock = state
    return app


# -- running it -----------------------------------------------------------------------------

def serve(host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning",
          state: MockState | None = None) -> None:
    """Run in the foreground (herald mock-provider)."""
    import uvicorn

    uvicorn.run(create_app(state), host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
                backlog=4096, timeout_keep_alive=30)


@contextmanager
def running_mock_server(state: MockState | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the mock on a free port in a background thread; yields its base URL."""
    import uvicorn

    state = state or MockState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(state), log_level="error", access_log=False, lifespan="off",
                            backlog=4096, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="herald-mock-provider")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("mock provider server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
