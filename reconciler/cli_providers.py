"""`herald test-send` and `herald mock-provider`."""

from __future__ import annotations

import asyncio
import sys
import uuid

import click

from .config import RuntimeConfig
from .diagnostics import render_diagnostics
from .encoding import analyze
from .secrets import redact


@click.command("test-send")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--provider", "provider", help="Send through this provider only (no failover).")
@click.option("--group", "group", help="Send through this provider group (default: routed by country).")
@click.option("--to", "to", required=True, help="Recipient in E.164, e.g. +14155550123.")
@click.option("--body", "body", required=True, help="Message text.")
@click.option("--template-id", help="Template id for DLT/template providers (MSG91, generic $$TemplateID).")
@click.option("--var", "variables", multiple=True, help="Template variable, in order (repeatable).")
def test_send(paths: tuple[str, ...], provider: str | None, group: str | None, to: str, body: str,
              template_id: str | None, variables: tuple[str, ...]) -> None:
    """Send one real SMS through a provider or group of the desired state in PATHS.

    Prints the provider used, its message id, the encoding and the segment count. Exit 1 when the
    message was not accepted, 2 on usage or configuration errors. Set HERALD_PROVIDER_BASE_URL to
    send to `herald mock-provider` instead of the real APIs.
    """
    from .cli import _default_paths
    from .loading import load_paths
    from .providers import GroupRouter, OutboundMessage

    if provider and group:
        raise click.UsageError("give --provider or --group, not both")
    result = load_paths(_default_paths(paths))
    if not result.ok:
        click.echo(render_diagnostics(result.errors, "text"), err=True)
        sys.exit(2)
    state = result.state
    if provider and provider not in state.providers:
        raise click.UsageError(f"unknown provider '{provider}' (known: {', '.join(sorted(state.providers))})")
    if group and group not in state.groups:
        raise click.UsageError(f"unknown group '{group}' (known: {', '.join(sorted(state.groups))})")
    message = OutboundMessage(message_id=f"test-{uuid.uuid4().hex}", to=to, body=body, template_id=template_id,
                              template_variables=variables, metadata={"kind": "test-send"})

    async def send() -> list:
        async with GroupRouter(state, RuntimeConfig.from_env()) as router:
            if provider:
                return await router.send_via(provider, [message])
            return await router.send([message], group=group)

    (sent,) = asyncio.run(send())
    info = analyze(body)
    click.echo(f"provider:    {sent.provider or '-'}")
    click.echo(f"message id:  {sent.provider_message_id or '-'}")
    click.echo(f"encoding:    {info.encoding} ({info.units} units)")
    click.echo(f"segments:    {info.segments}")
    click.echo(f"attempts:    {sent.attempts}")
    if sent.status != "sent":
        click.echo(redact(f"error: {sent.error}"), err=True)
        sys.exit(1)
    click.echo("status:      sent")


@click.command("mock-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--dedupe", is_flag=True,
              help="Behave as an idempotent provider: replay the first answer to a repeated Idempotency-Key "
                   "and drop requests whose client hung up (default: like the real APIs, neither).")
@click.option("--visibility-delay", default=0.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds before a taken message shows in the providers' lookups (Twilio's Message list).")
def mock_provider(host: str, port: int, log_level: str, dedupe: bool, visibility_delay: float) -> None:
    """Run the mock provider server (every provider's API under /{type}/…, control under /_mock/).

    Point Herald at it with HERALD_PROVIDER_BASE_URL=http://HOST:PORT.
    """
    from .providers.mock_server import MockState, serve

    click.echo(f"mock provider on http://{host}:{port} (HERALD_PROVIDER_BASE_URL=http://{host}:{port})", err=True)
    serve(host=host, port=port, log_level=log_level,
          state=MockState(dedupe=dedupe, finish_abandoned=not dedupe, visibility_delay=visibility_delay))


@click.command("receipt-urls")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--base-url", envvar="HERALD_PUBLIC_URL", required=True,
              help="Public scheme://host of the Herald daemon, e.g. https://herald.example (default: HERALD_PUBLIC_URL)")
@click.option("--inbound", is_flag=True, help="Print the inbound-message (reply) webhook URLs instead.")
def receipt_urls(paths: tuple[str, ...], base_url: str, inbound: bool) -> None:
    """Print the delivery-receipt callback URL to configure at each provider (--inbound: the URL for
    replies, where STOP/START/HELP arrive). With --public-url, Twilio, Vonage and Exotel get the receipt
    URL with every message; the others need it pasted into their console.

    Twilio and Vonage-with-signatureSecret sign their callbacks; the others carry a per-provider
    token in the URL (derived from HERALD_RECEIPT_SECRET or the provider's credential), so treat the
    output as a secret.
    """
    from .cli import _default_paths
    from .loading import load_paths
    from .models.provider import TwilioSpec, VonageSpec
    from .providers.registry import receipt_token, with_token
    from .secrets import SecretError

    result = load_paths(_default_paths(paths))
    if not result.ok:
        click.echo(render_diagnostics(result.errors, "text"), err=True)
        sys.exit(2)
    for name, provider in sorted(result.state.providers.items()):
        url = f"{base_url.rstrip('/')}/{'inbound' if inbound else 'receipts'}/{name}"
        spec = provider.spec
        if isinstance(spec, TwilioSpec) or (isinstance(spec, VonageSpec) and spec.signatureSecret):
            click.echo(f"{name}\t{url}\t(signed by the provider)")
            continue
        try:
            token = receipt_token(provider)
        except SecretError as exc:
            click.echo(f"{name}\t-\t({exc})")
            continue
        click.echo(f"{name}\t{with_token(url, token)}" if token else f"{name}\t-\t(no credential to derive a token)")
