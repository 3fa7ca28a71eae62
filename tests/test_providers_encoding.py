"""GSM-7 vs UCS-2 detection and segment counting (160/153, 70/67; escapes and surrogate pairs are never
split across parts)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.encoding import GSM7_BASIC, GSM7_EXTENSION, analyze


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("", "GSM-7", 0, 1),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("Price: 5€", "GSM-7", 10, 1),  # € is in the extension table: escape + char
    ("{}" * 40, "GSM-7", 160, 1),
    ("{}" * 40 + "a", "GSM-7", 161, 2),
    ("[" * 80, "GSM-7", 160, 1),
    ("naïve", "UCS-2", 5, 1),  # ï is not in the GSM table
    ("ÄÖÑÜ§¿àèéùìòØøÅåÆæßÉ", "GSM-7", 20, 1),
    ("ж" * 70, "UCS-2", 70, 1),
    ("ж" * 71, "UCS-2", 71, 2),
    ("ж" * 134, "UCS-2", 134, 2),
    ("ж" * 135, "UCS-2", 135, 3),
    ("😀" * 35, "UCS-2", 70, 1),  # outside the BMP: two UTF-16 units each
    ("😀" * 36, "UCS-2", 72, 2),
    ("a" + "😀" * 35, "UCS-2", 71, 2),
    ("ç", "UCS-2", 1, 1),  # only capital Ç is in GSM 03.38
])
def test_encoding_units_and_segments(text: str, encoding: str, units: int, segments: int) -> None:
    result = analyze(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_escape_sequence_is_not_split_across_parts() -> None:
    # 152 plain septets, then '€' (2 septets): the first part cannot take both halves, so it ends at 152.
    text = "a" * 152 + "€" + "a" * 152
    assert analyze(text).units == 306
    assert analyze(text).segments == 3  # naive ceil(306/153) would say 2


def test_surrogate_pair_is_not_split_across_parts() -> None:
    text = "ж" * 66 + "😀" + "ж" * 66  # 134 units; the emoji cannot straddle parts 1 and 2
    assert analyze(text).units == 134
    assert analyze(text).segments == 3


GSM_TEXT = st.text(alphabet=sorted(GSM7_BASIC - {"\x1b"} | GSM7_EXTENSION), max_size=700)


@given(GSM_TEXT)
def test_gsm_segments_are_never_fewer_than_the_naive_count(text: str) -> None:
    result = analyze(text)
    assert result.encoding == "GSM-7"
    naive = 1 if result.units <= 160 else math.ceil(result.units / 153)
    assert naive <= result.segments <= naive + result.units // 153 + 1


@given(st.text(min_size=1, max_size=300))
def test_any_text_gets_an_encoding_and_at_least_one_segment(text: str) -> None:
    result = analyze(text)
    limit = 160 if result.encoding == "GSM-7" else 70
    assert result.segments >= 1
    assert (result.segments == 1) == (result.units <= limit)
