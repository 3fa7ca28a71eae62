"""The `herald` command line: thin wrappers over the core modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .diagnostics import render_diagnostics

if TYPE_CHECKING:
    from .loading import DesiredState

DEFAULT_PATHS = ("providers", "campaigns")


def _default_paths(paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    found = [p for p in DEFAULT_PATHS if Path(p).exists()]
    if not found:
        raise click.UsageError("no PATH given and no providers/ or campaigns/ directory here")
    return found


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="herald")
def main() -> None:
    """Herald: SMS campaigns as code."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="github prints ::error annotations for pull requests.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(paths: tuple[str, ...], fmt: str, strict: bool) -> None:
    """Validate the desired state in PATHS (default: providers/ campaigns/).

    Exit 0 when valid, 1 when invalid, 2 on usage errors.
    """
    from .loading import load_paths

    result = load_paths(_default_paths(paths))
    output = render_diagnostics(result.diagnostics, fmt)
    if output:
        click.echo(output, err=fmt == "text")
    failed = not result.ok or (strict and result.diagnostics)
    if fmt == "text":
        state = result.state
        summary = (f"{len(state.providers)} providers, {len(state.groups)} groups, "
                   f"{len(state.segments)} segments, {len(state.campaigns)} campaigns")
        errors = len(result.errors)
        warnings = len(result.diagnostics) - errors
        status = "invalid" if failed else "valid"
        click.echo(f"{status}: {summary}; {errors} errors, {warnings} warnings", err=bool(failed))
        _echo_secrets(state)
    sys.exit(1 if failed else 0)


def _echo_secrets(state: DesiredState) -> None:
    """One line per campaign naming the secrets it uses (references only, never values)."""
    from .references import campaign_secrets

    for name, campaign in sorted(state.campaigns.items()):
        names = campaign_secrets(campaign, state)
        if names:
            click.echo(f"secrets used by campaign {name}: {', '.join(names)}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("schemas"),
              show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the files differ from the models instead of writing.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/reference.md"),
              show_default=True, help="Where the field reference (Markdown) goes.")
def schema(out: Path, check: bool, reference: Path) -> None:
    """Write the JSON Schemas (one per kind and herald.json for all), the OpenAPI description of the
    daemon's API and the field reference, all generated from the code (for CI and editors)."""
    from .schema import drifted_files, write_generated

    if check:
        drifted = drifted_files(out, reference)
        for path in drifted:
            click.echo(f"{path}: out of date; run 'herald schema'", err=True)
        sys.exit(1 if drifted else 0)
    for path in write_generated(out, reference):
        click.echo(f"wrote {path}")


from .cli_providers import mock_provider, receipt_urls, test_send  # noqa: E402

main.add_command(test_send)
main.add_command(mock_provider)
main.add_command(receipt_urls)

from .cli_consent import optouts  # noqa: E402

main.add_command(optouts)

from .cli_audience import ingest, reach  # noqa: E402

main.add_command(ingest)
main.add_command(reach)

from .cli_state import STATE_COMMANDS  # noqa: E402

for _command in STATE_COMMANDS:
    main.add_command(_command)

from .cli_engine import ENGINE_COMMANDS  # noqa: E402

for _command in ENGINE_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
