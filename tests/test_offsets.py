"""UTF-8 byte offsets <-> character offsets (qa_core.offsets)."""
from __future__ import annotations

import random

import pytest

from qa_core.offsets import (
    ByteCharMap,
    OffsetError,
    char_span_to_byte_span,
    unencodable_at,
)

TEXTS = {
    "ascii": "The Higgs boson was discovered in 2012.",
    "accented": "Café crème à Zürich, naïve résumé.",
    "cjk": "東京は日本の首都です。中文",
    "emoji": "hi 🤗 there 🚀🚀 end",
    "mixed": "é中🤗a",
    "empty": "",
}


def char_to_byte(text: str, char_offset: int) -> int:
    return char_span_to_byte_span(text, 0, char_offset)[1]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_char_boundary_round_trips(name):
    text = TEXTS[name]
    byte_map = ByteCharMap.for_text(text)
    assert byte_map.num_bytes == len(text.encode("utf-8"))
    for char in range(len(text) + 1):  # includes the boundaries 0 and len
        b = char_to_byte(text, char)
        assert b == len(text[:char].encode("utf-8"))
        assert byte_map.to_char(b) == char


@pytest.mark.parametrize("name", sorted(set(TEXTS) - {"empty"}))
def test_span_decodes_same_text_as_byte_slice(name):
    text = TEXTS[name]
    data = text.encode("utf-8")
    byte_map = ByteCharMap.for_text(text)
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            bs, be = char_to_byte(text, i), char_to_byte(text, j)
            assert byte_map.span_to_chars(bs, be) == (i, j)
            assert text[i:j] == data[bs:be].decode("utf-8")


def test_known_values():
    # é = 2 bytes, 中 = 3 bytes, 🤗 = 4 bytes
    text = TEXTS["mixed"]
    assert [char_to_byte(text, c) for c in range(5)] == [0, 2, 5, 9, 10]
    assert ByteCharMap.for_text(text).span_to_chars(5, 9) == (2, 3)
    assert ByteCharMap.for_text(text).span_to_chars(0, 10) == (0, 4)
    assert ByteCharMap.for_text(text).to_char(10) == 4 == len(text)
    assert ByteCharMap.for_text(text).to_char(0) == 0


@pytest.mark.parametrize("offset", [-1, 11, 100])
def test_out_of_range_byte_offset(offset):
    with pytest.raises(OffsetError) as info:
        ByteCharMap.for_text(TEXTS["mixed"]).to_char(offset)
    assert info.value.reason == "byte_offset_out_of_range"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("offset", [1, 3, 4, 6, 7, 8])  # inside é (0-1), 中 (2-4), 🤗 (5-8)
def test_mid_character_byte_offset(offset):
    with pytest.raises(OffsetError) as info:
        ByteCharMap.for_text(TEXTS["mixed"]).to_char(offset)
    assert info.value.reason == "byte_offset_splits_character"


def test_span_errors():
    byte_map = ByteCharMap.for_text(TEXTS["emoji"])
    with pytest.raises(OffsetError) as info:
        byte_map.span_to_chars(5, 5)
    assert info.value.reason == "empty_or_reversed_span"
    with pytest.raises(OffsetError) as info:
        byte_map.span_to_chars(6, 3)
    assert info.value.reason == "empty_or_reversed_span"
    with pytest.raises(OffsetError) as info:
        byte_map.span_to_chars(3, 5)  # 🤗 occupies bytes 3..6: 5 splits it
    assert info.value.reason == "byte_offset_splits_character"
    with pytest.raises(OffsetError) as info:
        byte_map.span_to_chars(0, 10_000)
    assert info.value.reason == "byte_offset_out_of_range"


@pytest.mark.parametrize("offset", [-1, 6])
def test_char_offset_out_of_range(offset):
    with pytest.raises(OffsetError) as info:
        char_to_byte("é中🤗a", offset)
    assert info.value.reason == "char_offset_out_of_range"


def test_random_texts_inverse_property():
    """char_to_byte and ByteCharMap.to_char are inverses; every non-boundary byte is refused."""
    rng = random.Random(1234)
    alphabet = "ab Z09.é ñ ß Ω 中文字 한 ア 🤗🚀😀 \n\t"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        data = text.encode("utf-8")
        byte_map = ByteCharMap.for_text(text)
        boundaries = {char_to_byte(text, c): c for c in range(len(text) + 1)}
        for b in range(len(data) + 1):
            if b in boundaries:
                assert byte_map.to_char(b) == boundaries[b]
            else:
                with pytest.raises(OffsetError) as info:
                    byte_map.to_char(b)
                assert info.value.reason == "byte_offset_splits_character"
        if text:
            i = rng.randrange(len(text))
            j = rng.randint(i + 1, len(text))
            bs, be = char_to_byte(text, i), char_to_byte(text, j)
            assert byte_map.span_to_chars(bs, be) == (i, j)
            assert data[bs:be].decode("utf-8") == text[i:j]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("plain ascii", None), ("中文 🤗 é", None), ("ab\ud800cd", 2),
     ("é\udcff", 1), ("\udc80" + "x" * 5, 0), ("🤗x\ud83d", 2)],
)
def test_unencodable_at_finds_the_first_lone_surrogate(text, expected):
    assert unencodable_at(text) == expected
