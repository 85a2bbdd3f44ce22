"""The incremental detokenizer on real tokenizers: byte-level BPE (GPT-2's and a small one) and characters."""

from __future__ import annotations

import random

import pytest

from conftest import GPT2_TOKENIZER_DIR, require_gpt2_tokenizer_dir, save_tokenizer
from genkit.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from genkit.models.tokenizer import CharTokenizer, load_tokenizer

# Characters whose UTF-8 bytes byte-level BPE splits across tokens.
HARD_TEXTS = [
    "héllo wörld, naïve café, Ångström",
    "emoji 😀🎉 and a family 👨‍👩‍👧 and a flag 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "combining marks: e\u0301 a\u0308 n\u0303 Z\u0351\u0352",
    "math Ω≈ç√∫ and arrows →⇒",
    " leading space, trailing space ",
    "mixed 😀日本 e\u0301😀\n\nnew lines\tand tabs",
]


def stream_ids(tokenizer, ids: list[int]) -> tuple[list[str], str]:
    """Feed ``ids`` one at a time; return the deltas of add() and the flush."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add(token) for token in ids]
    return deltas, detokenizer.flush()


def assert_stream_invariants(tokenizer, ids: list[int]) -> None:
    """Check the detokenizer's guarantees for one id sequence."""
    full = tokenizer.decode(ids)
    detokenizer = IncrementalDetokenizer(tokenizer)
    released = ""
    for count, token in enumerate(ids, start=1):
        released += detokenizer.add(token)
        assert full.startswith(released), (ids[:count], released, full)
        assert detokenizer.text == released
        # A U+FFFD before the flush must come from invalid bytes that more ids cannot repair.
        if REPLACEMENT_CHAR in released:
            assert REPLACEMENT_CHAR in tokenizer.decode(ids[:count])
    released += detokenizer.flush()
    assert released == full, ids
    assert detokenizer.flush() == ""


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return load_tokenizer(require_gpt2_tokenizer_dir())


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    """The small byte-level BPE of conftest: 256 byte tokens, three merges, an EOS token."""
    folder = tmp_path_factory.mktemp("byte-bpe")
    save_tokenizer("bytes", folder, tmp_path_factory.mktemp("scratch"))
    return load_tokenizer(folder)


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_gpt2_hard_text_round_trips(gpt2_tokenizer, text):
    ids = gpt2_tokenizer.encode(text)
    deltas, tail = stream_ids(gpt2_tokenizer, ids)
    assert "".join(deltas) == text
    assert tail == ""
    assert not any(REPLACEMENT_CHAR in delta for delta in deltas)


def test_gpt2_splits_characters_across_tokens(gpt2_tokenizer):
    # Guard: the hard texts do contain characters split over tokens, so held-back text is tested.
    ids = gpt2_tokenizer.encode(HARD_TEXTS[1])
    deltas, _ = stream_ids(gpt2_tokenizer, ids)
    assert "" in deltas
    assert any(REPLACEMENT_CHAR in gpt2_tokenizer.decode([token]) for token in ids)


def test_gpt2_tokenizer_test_vectors(gpt2_tokenizer):
    path = GPT2_TOKENIZER_DIR / "vectors" / "gpt2.inp"
    if not path.is_file():
        pytest.skip(f"tokenizer test vectors not found at {path}")
    texts = [t for t in path.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n") if t]
    assert len(texts) > 40
    for text in texts:
        ids = gpt2_tokenizer.encode(text)
        deltas, tail = stream_ids(gpt2_tokenizer, ids)
        assert "".join(deltas) + tail == text
        assert not any(REPLACEMENT_CHAR in delta for delta in deltas), text


def test_gpt2_random_ids(gpt2_tokenizer):
    rng = random.Random(1)
    # GPT-2 ids 0..255 are the single bytes, so mixing them in makes split and invalid UTF-8 common.
    for _ in range(400):
        ids = [rng.randrange(256) if rng.random() < 0.6 else rng.randrange(50257) for _ in range(rng.randint(1, 16))]
        assert_stream_invariants(gpt2_tokenizer, ids)


def test_gpt2_valid_text_no_replacement(gpt2_tokenizer):
    rng = random.Random(2)
    alphabet = "aé😀日本\u0301 ?Ω👩\u200d"
    for _ in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        ids = gpt2_tokenizer.encode(text)
        deltas, tail = stream_ids(gpt2_tokenizer, ids)
        assert "".join(deltas) == text
        assert tail == ""
        assert not any(REPLACEMENT_CHAR in delta for delta in deltas)


def test_gpt2_special_token_decodes_to_nothing(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("end") + [50256]
    deltas, tail = stream_ids(gpt2_tokenizer, ids)
    assert "".join(deltas) + tail == "end"
    assert deltas[-1] == ""


def test_byte_bpe_random_ids(byte_tokenizer):
    rng = random.Random(3)
    for _ in range(400):
        ids = [rng.randrange(byte_tokenizer.vocab_size) for _ in range(rng.randint(1, 16))]
        assert_stream_invariants(byte_tokenizer, ids)


def test_byte_bpe_one_byte_per_token(byte_tokenizer):
    # Each character arrives as one token per byte, and only its last byte releases it.
    text = "a😀b日"
    ids = byte_tokenizer.encode(text)
    assert len(ids) == 1 + 4 + 1 + 3
    deltas, tail = stream_ids(byte_tokenizer, ids)
    assert deltas == ["a", "", "", "", "😀", "b", "", "", "日"]
    assert tail == ""


def test_incomplete_last_character_flushes_as_replacement(byte_tokenizer):
    ids = byte_tokenizer.encode("ok€")[:-1]  # "€" is three bytes; drop the last
    deltas, tail = stream_ids(byte_tokenizer, ids)
    assert deltas == ["o", "k", "", ""]
    assert tail == REPLACEMENT_CHAR
    assert byte_tokenizer.decode(ids) == "ok" + REPLACEMENT_CHAR


def test_invalid_byte_then_text_released(byte_tokenizer):
    # A lone continuation byte can never become a character: it is released once text follows.
    lone = byte_tokenizer.encode("€")[1]
    ids = byte_tokenizer.encode("a") + [lone] + byte_tokenizer.encode("bc")
    deltas, tail = stream_ids(byte_tokenizer, ids)
    assert deltas == ["a", "", REPLACEMENT_CHAR + "b", "c"]
    assert tail == ""


def test_char_tokenizer_one_delta_per_token():
    tokenizer = CharTokenizer.from_text("ab cd\né")
    text = "é a\nbc d"
    deltas, tail = stream_ids(tokenizer, tokenizer.encode(text))
    assert deltas == list(text)
    assert tail == ""
