"""The schemas' zone list is checked in (reconciler/data/zones.txt), so generation does not depend on the
installed tzdata release; every zone it offers must still be one `herald validate` accepts."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from reconciler.schema import iana_zones, installed_tzdata_zones


def test_every_zone_the_schemas_offer_loads() -> None:
    zones = iana_zones()
    assert len(zones) > 500 and "Europe/London" in zones and "Pacific/Kiritimati" in zones
    assert [z for z in zones if ZoneInfo(z).key != z] == []


def test_the_list_is_the_installed_tzdata_or_older() -> None:
    """A newer tzdata may add zones (the editor then flags a brand-new zone `herald validate` accepts until
    the list is refreshed); it must never have dropped one the schemas offer."""
    assert set(iana_zones()) <= set(installed_tzdata_zones())
