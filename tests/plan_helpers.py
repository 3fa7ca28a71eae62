"""Desired states written as YAML for the plan/apply tests."""

from __future__ import annotations

from reconciler.loading import DesiredState, SourceFile, load_files

PROVIDERS = """\
apiVersion: herald/v1
kind: Provider
metadata: {name: acme}
spec:
  type: generic_http
  url: "https://sms.example.com/send"
  auth: {bearer: {secretRef: {env: PLAN_TEST_TOKEN}}}
  body: {to: "$$To", text: "$$Body"}
  rateLimit: {messagesPerSecond: 10}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec: {providers: [acme], default: true}
"""

SETTINGS = """\
apiVersion: herald/v1
kind: Settings
metadata: {name: global}
spec:
  pruneGuard: {maxShare: 0.5}
"""

CAMPAIGN = """\
apiVersion: herald/v1
kind: Campaign
metadata: {{name: {name}}}
spec:
  type: past_behavior
  owner: team@example.com
  paused: {paused}
  schedule: {{cron: "0 10 * * *"}}
  timezone: {{mode: fixed, zone: UTC}}
  message: {{body: "{body}"}}
"""


def campaign_yaml(name: str, body: str = "Hello {{ user.first_name }}", paused: bool = False) -> str:
    return CAMPAIGN.format(name=name, body=body, paused=str(paused).lower())


def desired(campaigns: dict[str, str] | None = None, *, settings: bool = True) -> DesiredState:
    """Providers + optional settings + the given campaign documents (name -> YAML)."""
    files = [SourceFile("providers/acme.yaml", PROVIDERS.encode())]
    if settings:
        files.append(SourceFile("campaigns/settings.yaml", SETTINGS.encode()))
    for name, text in (campaigns or {}).items():
        files.append(SourceFile(f"campaigns/{name}.yaml", text.encode()))
    result = load_files(files)
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.state


def campaigns(*names: str, **overrides: str) -> dict[str, str]:
    docs = {n: campaign_yaml(n) for n in names}
    docs.update(overrides)
    return docs
