"""SMS encoding and segment counting: GSM 03.38 (7-bit, with the extension table) vs UCS-2.

A message that fits the GSM-7 alphabet costs one septet per basic character and two per extension
character (escape + char). Anything else forces UCS-2, counted in UTF-16 code units, so a character
outside the Basic Multilingual Plane (most emoji) costs two. Concatenated messages lose room to the
User Data Header: 153 septets or 67 code units per part, and phones never split an escape sequence or
a surrogate pair across parts, so a part may end one unit short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsEncoding:
    encoding: Encoding
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int

    @property
    def unicode(self) -> bool:
        return self.encoding == "UCS-2"


def is_gsm7(text: str) -> bool:
    return GSM7_ALL.issuperset(text)


def _gsm7_cost(ch: str) -> int:
    return 2 if ch in GSM7_EXTENSION else 1


def _ucs2_cost(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _count_segments(costs: list[int], single: int, part: int) -> int:
    total = sum(costs)
    if total <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:  # an escape pair or surrogate pair never straddles two parts
            segments += 1
            used = 0
        used += cost
    return segments


def analyze(text: str) -> SmsEncoding:
    """Encoding, length in units and number of SMS parts for `text` (an empty text is one part)."""
    if is_gsm7(text):
        units = len(text) + sum(1 for ch in text if ch in GSM7_EXTENSION)
        if units <= GSM7_SINGLE:
            return SmsEncoding("GSM-7", units, 1)
        return SmsEncoding("GSM-7", units, _count_segments([_gsm7_cost(ch) for ch in text], GSM7_SINGLE, GSM7_PART))
    units = len(text.encode("utf-16-le")) // 2
    if units <= UCS2_SINGLE:
        return SmsEncoding("UCS-2", units, 1)
    return SmsEncoding("UCS-2", units, _count_segments([_ucs2_cost(ch) for ch in text], UCS2_SINGLE, UCS2_PART))
