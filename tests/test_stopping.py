"""Stopping criteria: stop strings on decoded text, max_time, custom criteria, finish reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genkit.testing import tiny_generator

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class ForceText:
    """A logits processor that forces the model to emit given token ids, one per step."""

    def __init__(self, ids: list[int], prompt_length: int):
        self.ids = ids
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.ids[min(step, len(self.ids) - 1)]] = 0.0
        return forced


@pytest.fixture(scope="module")
def generator():
    return tiny_generator(seed=1, max_positions=128)


def forced(generator, prompt: str, text: str, **kwargs):
    ids = generator.tokenizer.encode(text)
    processor = ForceText(ids, len(generator.tokenizer.encode(prompt)))
    return generator.generate(prompt, logits_processors=[processor], **kwargs)


def test_stop_string_spanning_tokens(generator):
    result = forced(generator, "ab", "hello world. more", max_new_tokens=30, stop_strings=["world"])
    assert result.text == "hello "
    assert result.finish_reason == "stop"
    assert generator.tokenizer.decode(result.token_ids) == "hello world"


def test_stop_string_included_on_request(generator):
    result = forced(
        generator, "ab", "hello world. more", max_new_tokens=30, stop_strings="world", include_stop_str_in_output=True
    )
    assert result.text == "hello world"


def test_earliest_of_several_stop_strings(generator):
    result = forced(generator, "ab", "one two three", max_new_tokens=30, stop_strings=["three", "two"])
    assert result.text == "one "


def test_stop_string_absent_runs_to_length(generator):
    result = forced(generator, "ab", "abcabcabc", max_new_tokens=9, stop_strings=["zzz"])
    assert result.finish_reason == "length"
    assert result.text == "abcabcabc"


def test_stream_never_shows_stop_string(generator):
    ids = generator.tokenizer.encode("say wor wor world ok")
    processor = ForceText(ids, 2)
    stream = generator.stream("ab", logits_processors=[processor], max_new_tokens=40, stop_strings=["world"])
    events = list(stream)
    shown = ""
    for event in events:
        shown += event.text
        assert "world" not in shown
    assert shown == "say wor wor "
    assert shown == stream.result.text
    assert events[-1].finish_reason == "stop"


def test_batch_rows_stop_on_their_own(generator):
    # Each row copies its prompt's characters forever; only the first row contains "x".
    class EchoPrompt:
        def __init__(self, lengths):
            self.lengths = lengths

        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, -float("inf"))
            for row in range(input_ids.shape[0]):
                out[row, input_ids[row, -self.lengths[row]]] = 0.0
            return out

    prompts = ["abx", "cdef"]
    lengths = torch.tensor([len(p) for p in prompts])
    results = generator.generate_batch(
        prompts, max_new_tokens=10, stop_strings=["x"], logits_processors=[EchoPrompt(lengths)]
    )
    assert results[0].finish_reason == "stop"
    assert results[0].text == "ab"
    assert results[1].finish_reason == "length"
    assert results[1].text == "cdefcdefcd"


def test_max_time_stops(generator):
    result = generator.generate("ab", max_new_tokens=100, max_time=1e-9)
    assert result.finish_reason == "time"
    assert len(result.token_ids) == 1


def test_transformers_stopping_criteria_instance(generator):
    from transformers import StoppingCriteria

    class StopAfterThree(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 2 + 3, dtype=torch.bool)

    result = generator.generate("ab", max_new_tokens=20, stopping_criteria=[StopAfterThree()])
    assert len(result.token_ids) == 3
    assert result.finish_reason == "StopAfterThree"


def test_eos_wins_over_length_on_same_token(generator):
    ids = generator.generate("ab", max_new_tokens=3).token_ids
    result = generator.generate("ab", max_new_tokens=3, eos_token_id=ids[2])
    if ids[2] not in ids[:2]:
        assert result.finish_reason == "eos"


@pytest.fixture(scope="module")
def gpt2_tokenizer_folder():
    folder = DATA / "gpt2-tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip(f"real GPT-2 tokenizer files not found at {folder}")
    return folder


def test_stop_string_ending_inside_multibyte_character(gpt2_tokenizer_folder):
    from genkit.engine import Generator
    from genkit.models.base import LoadedModel
    from genkit.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(gpt2_tokenizer_folder)
    text = " naïve café ☃ snow"
    ids = tokenizer.encode(text)
    # The snowman is three UTF-8 bytes split over several byte-level tokens.
    assert len(tokenizer.encode(" ☃")) > 1
    toy = tiny_generator(seed=0)
    model = _ByteVocabModel(toy.model, tokenizer.vocab_size)
    generator = Generator(LoadedModel("bytes", "test", model, tokenizer))
    processor = ForceText(ids, 1)
    result = generator.generate([464], logits_processors=[processor], max_new_tokens=30, stop_strings=["é ☃"])
    assert result.finish_reason == "stop"
    assert result.text == " naïve caf"

    stream = generator.stream([464], logits_processors=[processor], max_new_tokens=len(ids))
    pieces = [event.text for event in stream]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


class _ByteVocabModel(torch.nn.Module):
    """A real toy GPT whose output head is widened to the GPT-2 vocabulary.

    Token ids beyond the toy vocabulary are folded into it for the embedding.
    """

    def __init__(self, toy, vocab_size: int):
        super().__init__()
        from genkit.models.base import ModelShape

        self.toy = toy
        self.vocab_size = vocab_size
        base = toy.shape
        self.shape = ModelShape(base.n_layers, base.n_heads, base.head_dim, vocab_size, base.max_positions)

    def forward(self, input_ids, position_ids, cache, padding_mask=None, last_only=False):
        logits = self.toy(input_ids % self.toy.shape.vocab_size, position_ids, cache, padding_mask, last_only)
        return logits.repeat(1, 1, self.vocab_size // logits.shape[-1] + 1)[..., : self.vocab_size]
