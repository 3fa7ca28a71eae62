"""CLI: `herald optouts` — the consent ledger (every opt-out and opt-in Herald recorded), exported."""

from __future__ import annotations

import csv
import json
import sys

import click

from .config import RuntimeConfig

FIELDS = ("at", "phone", "users", "opted_out", "source", "provider", "message")


@click.command("optouts")
@click.option("--state", "state_url", envvar="HERALD_STATE_URL", default=None, help="State store URL.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--all", "history", is_flag=True, help="Every consent change (opt-ins too), oldest first, "
              "instead of who is opted out now.")
def optouts(state_url: str | None, fmt: str, history: bool) -> None:
    """Export opt-outs: phone, users, when, source (keyword, provider_error, api, ingest), the message.

    Reads the audit log of the state store, so it works beside a running daemon."""
    from .consent import consent_ledger, current_optouts
    from .store import StoreNotFoundError, open_state_store

    try:
        store = open_state_store(state_url or RuntimeConfig.from_env().state_url, create=False)
    except StoreNotFoundError:
        raise click.ClickException("no state store yet: nothing has been recorded") from None
    try:
        ledger = consent_ledger(store)
    finally:
        store.close()
    rows = ledger if history else current_optouts(ledger)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "users": " ".join(row.get("users") or [])})
