"""The example providers with a test's own Settings and campaigns, for the in-process engine world.

The example providers send header secrets (ACME_API_KEY, DLT_GATEWAY_TOKEN), which Settings must list in
`spec.secrets.allow`: a test that brings its own Settings builds it with settings_yaml(), which lists
them, rather than repeating the list.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_HEADER_SECRETS = ("ACME_API_KEY", "DLT_GATEWAY_TOKEN")


def settings_yaml(*spec_lines: str) -> str:
    """A Settings document (UTC, the example providers' header secrets allowed) plus `spec_lines`."""
    lines = ["defaultTimezone: UTC", *spec_lines, f"secrets: {{allow: [{', '.join(EXAMPLE_HEADER_SECRETS)}]}}"]
    return "apiVersion: herald/v1\nkind: Settings\nmetadata: {name: global}\nspec:\n" + "".join(
        f"  {line}\n" for line in lines)


def example_sources(root: Path, campaigns: Mapping[str, str]) -> list[Path]:
    """root/providers (a copy of the example providers) and root/campaigns holding `campaigns`
    (file stem → YAML), as demo_world's `sources`."""
    shutil.copytree(ROOT / "providers", root / "providers")
    (root / "campaigns").mkdir(parents=True)
    for stem, text in campaigns.items():
        (root / "campaigns" / f"{stem}.yaml").write_text(text)
    return [root / "providers", root / "campaigns"]
