"""The daemon's HTTP API description (OpenAPI 3.1): served at /openapi.json, checked in as
schemas/openapi.json, covering every route, and honoured by the live app under schemathesis.

Schemathesis drives the daemon's own Starlette app (the one `herald run` serves) in process, with the
admin token, over every described operation: generated valid and invalid requests must never get a
5xx, and every answer's status code, content type, headers and body must be the ones described.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import ADMIN_TOKEN, WEBHOOK_SECRET, engine_world
from example_repo import settings_yaml
from hypothesis import HealthCheck, given, settings
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from reconciler.daemon import Daemon, DaemonOptions
from reconciler.http.openapi import openapi_document
from reconciler.providers.registry import receipt_token
from reconciler.schema import OPENAPI_FILE, render_schema

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
UNDESCRIBED = {"/dashboard"}  # HTML pages for people, not an API
SETTINGS = settings_yaml()
EXAMPLE_PROVIDERS = sorted((ROOT / "providers").glob("*.yaml"))
PROVIDER_NAMES = sorted(name for path in EXAMPLE_PROVIDERS
                        for name in re.findall(r"^kind: Provider\nmetadata:\n  name: (\S+)", path.read_text(), re.M))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon on the example providers (every provider type, secrets from the demo's environment)."""
    files = {f"providers/{path.name}": path.read_text() for path in EXAMPLE_PROVIDERS}
    files["campaigns/settings.yaml"] = SETTINGS
    with engine_world(tmp_path_factory.mktemp("openapi"), files, population=4,
                      start=datetime(2026, 12, 1, 9, 0, tzinfo=UTC)) as world:
        world.step()
        rt = world.engine.rt
        # the config names the store the demo world opened (snapshots are written beside it)
        rt.config = dataclasses.replace(rt.config, admin_token=ADMIN_TOKEN,
                                        audience_url=f"duckdb:///{world.workdir / 'audience.duckdb'}")
        yield Daemon(world.engine, DaemonOptions(webhook_secret=WEBHOOK_SECRET))


@pytest.fixture(scope="module")
def api_schema(daemon: Daemon) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", daemon.app)


def test_served_description_is_the_checked_in_one(daemon: Daemon) -> None:
    with TestClient(daemon.app) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    checked_in = (ROOT / "schemas" / OPENAPI_FILE).read_text(encoding="utf-8")
    assert render_schema(answer.json()) == checked_in, "run `herald schema` and commit schemas/openapi.json"
    assert answer.json()["openapi"].startswith("3.1")


def test_every_route_is_described(daemon: Daemon) -> None:
    """A route added to the daemon without a description fails here (and the dashboard is the only exception)."""
    described = openapi_document()["paths"]
    for route in daemon.app.routes:
        if isinstance(route, Mount):
            assert route.path in UNDESCRIBED
            continue
        assert isinstance(route, Route)
        assert route.path in described, f"{route.path} is not in reconciler/http/openapi.py"
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert methods == set(described[route.path]) - {"parameters"}, route.path


def test_description_is_valid_openapi_31() -> None:
    from jsonschema import Draft202012Validator

    document = json.loads((ROOT / "schemas" / OPENAPI_FILE).read_text(encoding="utf-8"))
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    schemathesis.openapi.from_dict(document)  # raises on a malformed document


def _constrains(schema: dict[str, Any]) -> bool:
    """Whether a request part's schema rules anything out (else there is no invalid request to make)."""
    return bool(set(schema) - {"description", "type"}) or schema.get("type") not in (None, "string")


def _breakable(item: dict[str, Any], operation: dict[str, Any]) -> bool:
    parameters = item.get("parameters", []) + operation.get("parameters", [])
    bodies = operation.get("requestBody", {}).get("content", {}).values()
    return any(_constrains(p["schema"]) for p in parameters) or any(_constrains(b["schema"]) for b in bodies)


_PATHS = openapi_document()["paths"]
OPERATIONS = [(mode, f"{method.upper()} {path}") for path, item in _PATHS.items() for method in item
              if method != "parameters"
              for mode in ("positive", "negative") if mode == "positive" or _breakable(item, item[method])]


@pytest.mark.parametrize(("mode", "label"), OPERATIONS, ids=[f"{m}-{label}" for m, label in OPERATIONS])
def test_api_honours_its_description(api_schema: Any, label: str, mode: str) -> None:
    """No 5xx, and every status, content type, header and body as described (with the admin token):
    schemathesis generates requests that fit the description (positive) and ones that break it
    (negative) for each operation, derandomized so a failure replays."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @given(case=strategy)
    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def exercise(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    exercise()


def test_a_description_that_lies_is_caught(daemon: Daemon) -> None:
    """The conformance run can fail: with /v1/users promised to answer a string count, a valid request's
    real answer (an integer) breaks the description and schemathesis says so."""
    document = openapi_document()
    document["components"]["schemas"]["UsersAccepted"]["properties"]["accepted"] = {"type": "string"}
    lying = schemathesis.openapi.from_dict(document)
    lying.app = daemon.app
    operation = lying.find_operation_by_label("POST /v1/users")
    case = lying.make_case(operation=operation, body={"id": "u-lie", "phone": "+14155550100"},
                           media_type="application/json")
    with pytest.raises(FailureGroup, match="Response violates schema"):
        case.call_and_validate(headers=AUTH, checks=CHECKS)


CALLBACKS = [(label, name) for label in ("POST /receipts/{provider}", "GET /receipts/{provider}",
                                         "POST /inbound/{provider}", "GET /inbound/{provider}")
             for name in PROVIDER_NAMES]


@pytest.mark.parametrize(("label", "provider"), CALLBACKS, ids=[f"{label}-{name}" for label, name in CALLBACKS])
def test_provider_callbacks_honour_the_description(api_schema: Any, daemon: Daemon, label: str,
                                                   provider: str) -> None:
    """Receipts and replies for each configured provider, carrying its receipt token (so unsigned
    providers' parsers see the generated query parameters and bodies; Twilio checks its signature):
    never a 5xx, every answer as described."""
    operation = api_schema.find_operation_by_label(label)
    token = receipt_token(daemon.engine.state.providers[provider])
    strategy = operation.as_strategy(path_parameters={"provider": provider},
                                     query={"token": token} if token else None)

    @given(case=strategy)
    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def exercise(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    exercise()


GENUINE_RECEIPTS = [  # (operation, provider, query, body, media type): well-formed callbacks, as the providers send them
    ("POST /receipts/{provider}", "exotel-in", {}, {"SmsSid": "b6cf1e4bd4a1a2c7", "To": "+919876543210",
                                                     "Status": "failed", "DetailedStatusCode": "30003"},
     "application/x-www-form-urlencoded"),
    ("POST /receipts/{provider}", "msg91-in", {}, {"requestId": "3763646c3058373530393938", "number": "919876543210",
                                                    "status": "1", "desc": "DELIVERED"}, "application/json"),
    ("GET /receipts/{provider}", "netcore-in", {"TID": "81234567890", "STATUS": "DELIVRD"}, None, None),
    ("POST /receipts/{provider}", "acme-sms", {}, {"message_id": "msg_01HZX", "status": "undelivered",
                                                   "error_code": "EXPIRED"}, "application/json"),
]


@pytest.mark.parametrize(("label", "provider", "query", "body", "media_type"), GENUINE_RECEIPTS,
                         ids=[f"{label}-{provider}" for label, provider, *_ in GENUINE_RECEIPTS])
def test_genuine_receipts_are_answered_as_described(api_schema: Any, daemon: Daemon, label: str, provider: str,
                                                    query: dict[str, str], body: Any, media_type: str | None) -> None:
    """The success answers too (random data rarely reaches them): recorded, and answered as described."""
    operation = api_schema.find_operation_by_label(label)
    token = receipt_token(daemon.engine.state.providers[provider])
    assert token is not None
    extra: dict[str, Any] = {} if body is None else {"body": body, "media_type": media_type}
    case = api_schema.make_case(operation=operation, path_parameters={"provider": provider},
                                query={**query, "token": token}, **extra)
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code in (200, 204), response.text
