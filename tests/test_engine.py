"""The prefill/decode loop on a real (randomly initialised) toy GPT."""

from __future__ import annotations

import pytest
import torch

from genkit.errors import ConfigError, PromptError
from genkit.testing import tiny_generator


@pytest.fixture(scope="module")
def generator():
    return tiny_generator(seed=0, max_positions=64)


def test_manual_phases_match_generate(generator):
    state = generator.prefill("to be", max_new_tokens=12)
    tokens = [event.token_id for event in state.last_events]
    while not state.done:
        tokens += [event.token_id for event in generator.decode_step(state)]
    assert tokens == generator.generate("to be", max_new_tokens=12).token_ids
    assert generator.decode_step(state) == []


def test_prefill_produces_first_token(generator):
    state = generator.prefill("to be", max_new_tokens=5)
    assert len(state.last_events) == 1
    assert state.last_events[0].index == 0
    assert state.input_ids.shape == (1, len("to be") + 1)
    assert state.plan.cache.length() == len("to be")


def test_first_token_checked_by_stopping(generator):
    first = generator.generate("to be", max_new_tokens=1).token_ids[0]
    result = generator.generate("to be", max_new_tokens=10, eos_token_id=first)
    assert result.token_ids == [first]
    assert result.finish_reason == "eos"


def test_eos_list_stops_on_any(generator):
    ids = generator.generate("to be", max_new_tokens=6).token_ids
    result = generator.generate("to be", max_new_tokens=6, eos_token_id=[999 % 60, ids[2]])
    assert result.token_ids == ids[: ids.index(ids[2]) + 1]
    assert result.finish_reason == "eos"


def test_length_finish_and_stats(generator):
    result = generator.generate("to be", max_new_tokens=7)
    stats = result.stats
    assert len(result.token_ids) == 7
    assert result.finish_reason == "length"
    assert stats.prompt_tokens == 5
    assert stats.generated_tokens == 7
    assert len(stats.inter_token_latencies_s) == 6
    assert 0 < stats.prefill_s <= stats.ttft_s <= stats.total_s
    assert stats.decode_s > 0
    assert stats.decode_tokens_per_s == pytest.approx(6 / stats.decode_s)
    assert stats.kv_cache_bytes > 0


def test_caches_give_same_greedy_tokens(generator):
    concat = generator.generate("to be or", max_new_tokens=30, cache="concat")
    static = generator.generate("to be or", max_new_tokens=30, cache="static")
    assert concat.token_ids == static.token_ids


def test_static_cache_holds_whole_request(generator):
    result = generator.generate("to be", max_new_tokens=10, cache="static")
    concat = generator.generate("to be", max_new_tokens=10, cache="concat")
    # 2 layers x (k, v) x 2 heads x 16 dims x 4 bytes per position.
    per_position = 2 * 2 * 2 * 16 * 4
    assert result.stats.kv_cache_bytes == per_position * (5 + 10)
    assert concat.stats.kv_cache_bytes == per_position * (5 + 10 - 1)


def test_seeded_sampling_is_reproducible(generator):
    first = generator.generate("to be", max_new_tokens=20, do_sample=True, seed=7, top_k=0)
    again = generator.generate("to be", max_new_tokens=20, do_sample=True, seed=7, top_k=0)
    other = generator.generate("to be", max_new_tokens=20, do_sample=True, seed=8, top_k=0)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_seed_matches_global_rng(generator):
    seeded = generator.generate("to be", max_new_tokens=20, do_sample=True, seed=11, top_k=0)
    torch.manual_seed(11)
    global_rng = generator.generate("to be", max_new_tokens=20, do_sample=True, top_k=0)
    assert seeded.token_ids == global_rng.token_ids


def test_stream_events_match_generate(generator):
    stream = generator.stream("to be", max_new_tokens=15, do_sample=True, seed=2)
    events = list(stream)
    result = generator.generate("to be", max_new_tokens=15, do_sample=True, seed=2)
    assert [e.token_id for e in events] == result.token_ids
    assert "".join(e.text for e in events) == result.text
    assert [e.index for e in events] == list(range(15))
    assert [e.finish_reason for e in events] == [None] * 14 + ["length"]
    assert all(a.time_s <= b.time_s for a, b in zip(events, events[1:]))
    assert stream.result.token_ids == result.token_ids


def test_stream_result_before_end_raises(generator):
    stream = generator.stream("to be", max_new_tokens=3)
    next(iter(stream))
    with pytest.raises(RuntimeError, match="not finished"):
        stream.result


def test_batch_matches_single_prompts(generator):
    prompts = ["to be", "a", "question marks"]
    batch = generator.generate_batch(prompts, max_new_tokens=12)
    for prompt, result in zip(prompts, batch):
        single = generator.generate(prompt, max_new_tokens=12)
        assert result.token_ids == single.token_ids
        assert result.prompt_token_ids == single.prompt_token_ids


def test_batch_rows_stop_independently(generator):
    prompts = ["to be", "question marks"]
    singles = [generator.generate(p, max_new_tokens=12).token_ids for p in prompts]
    eos = singles[0][3]
    batch = generator.generate_batch(prompts, max_new_tokens=12, eos_token_id=eos)
    for tokens, result in zip(singles, batch):
        expected = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        assert result.token_ids == expected
        assert result.finish_reason == ("eos" if eos in tokens else "length")


def test_token_id_prompt(generator):
    ids = generator.tokenizer.encode("to be")
    assert generator.generate(ids, max_new_tokens=5).token_ids == generator.generate("to be", max_new_tokens=5).token_ids
    assert generator.generate(torch.tensor(ids), max_new_tokens=5).prompt_token_ids == ids


def test_context_window_stops_with_length(generator):
    prompt = "a" * 60
    result = generator.generate(prompt, max_new_tokens=50)
    assert result.finish_reason == "length"
    assert len(result.token_ids) == 65 - 60  # 64 positions fed, the 65th token is never fed


def test_full_window_prompt_still_gets_one_token(generator):
    result = generator.generate("a" * 64, max_new_tokens=5, cache="static")
    assert len(result.token_ids) == 1


def test_prompt_longer_than_window_names_both_numbers(generator):
    with pytest.raises(PromptError, match="65 tokens.*64 positions"):
        generator.generate("a" * 65, max_new_tokens=1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature=0.0"),
        ({"do_sample": True, "temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 1.5}, r"top_p=1.5.*\[0.0, 1.0\]"),
        ({"top_p": -0.1}, "top_p=-0.1"),
        ({"top_k": -1}, "top_k=-1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens=2.5"),
        ({"seed": -3}, "seed=-3"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ({"eos_token_id": 10_000}, "eos_token_id=10000"),
        ({"max_length": 3}, "max_length=3"),
        ({"stop_strings": [""]}, "stop_strings"),
    ],
)
def test_bad_config_raises(generator, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        generator.generate("to be", **kwargs)


def test_unknown_parameter_suggests_name(generator):
    with pytest.raises(ConfigError, match="'max_new_token' .*did you mean 'max_new_tokens'"):
        generator.generate("to be", max_new_token=3)


def test_greedy_ignores_temperature_zero(generator):
    assert generator.generate("to be", max_new_tokens=4, temperature=0.0).token_ids == \
        generator.generate("to be", max_new_tokens=4).token_ids


@pytest.mark.parametrize("prompt", ["", [], torch.tensor([], dtype=torch.long)])
def test_empty_prompt_raises(generator, prompt):
    with pytest.raises(PromptError, match="empty prompt"):
        generator.generate(prompt)


def test_prompt_outside_vocabulary(generator):
    with pytest.raises(PromptError, match="9999"):
        generator.generate([1, 9999])
    with pytest.raises(PromptError, match="'€'"):
        generator.generate("price €")


def test_transformers_generation_config_accepted(generator):
    from transformers import GenerationConfig as HFGenerationConfig

    config = HFGenerationConfig(max_new_tokens=6, do_sample=True, top_k=3, temperature=0.7)
    from_hf = generator.generate("to be", config, seed=4)
    direct = generator.generate("to be", max_new_tokens=6, do_sample=True, top_k=3, temperature=0.7, seed=4)
    assert from_hf.token_ids == direct.token_ids


def test_generation_defaults_from_checkpoint(generator, monkeypatch):
    monkeypatch.setattr(generator.loaded, "generation_defaults", {"max_new_tokens": 3, "transformers_version": "x"})
    assert len(generator.generate("to be").token_ids) == 3
    assert len(generator.generate("to be", max_new_tokens=5).token_ids) == 5


def test_request_max_length_beats_checkpoint_max_new_tokens(generator, monkeypatch):
    monkeypatch.setattr(generator.loaded, "generation_defaults", {"max_new_tokens": 30})
    result = generator.generate("to be", max_length=8)
    assert len(result.token_ids) == 8 - 5
    with pytest.raises(ConfigError, match="max_length=3"):
        generator.generate("to be", max_length=3)


def test_checkpoint_default_error_names_file(generator, monkeypatch):
    monkeypatch.setattr(generator.loaded, "generation_defaults", {"top_k": -5})
    with pytest.raises(ConfigError, match="top_k=-5.*generation_config.json"):
        generator.generate("to be")


def test_genkit_config_keeps_checkpoint_defaults(generator, monkeypatch):
    from genkit import GenerationConfig

    monkeypatch.setattr(generator.loaded, "generation_defaults", {"max_new_tokens": 4})
    result = generator.generate("to be", GenerationConfig(do_sample=True, seed=1))
    assert len(result.token_ids) == 4


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"seed": 2**64}, "seed=18446744073709551616"),
        ({"do_sample": True, "temperature": float("inf")}, "temperature=inf"),
        ({"top_p": float("nan")}, "top_p=nan"),
    ],
)
def test_out_of_range_values_raise(generator, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        generator.generate("to be", **kwargs)


def test_pad_token_outside_vocabulary(generator):
    with pytest.raises(ConfigError, match="pad_token_id=999"):
        generator.generate_batch(["to be", "a"], pad_token_id=999)


def test_numpy_scalars_accepted(generator):
    import numpy as np

    result = generator.generate(np.array([5, 6, 7]), max_new_tokens=np.int64(3), top_p=np.float32(0.5))
    assert len(result.token_ids) == 3
    assert type(result.token_ids[0]) is int


def test_non_integer_token_ids_rejected(generator):
    with pytest.raises(PromptError, match="True is not an integer"):
        generator.generate([True, 1])
    with pytest.raises(PromptError, match="1.0 is not an integer"):
        generator.generate([1.0])


def test_empty_prompt_in_batch_named(generator):
    with pytest.raises(PromptError, match="empty prompt 1"):
        generator.generate_batch(["to be", ""])


def test_undecodable_prompt_rejected(generator):
    with pytest.raises(PromptError, match="not valid UTF-8"):
        generator.generate("to\udcffbe")


def test_all_tokens_masked_raises_generation_error(generator):
    from genkit.errors import GenerationError

    everything = list(range(generator.loaded.shape.vocab_size))
    with pytest.raises(GenerationError, match="Every token may be masked"):
        generator.generate("to be", do_sample=True, suppress_tokens=everything, max_new_tokens=2)


@pytest.mark.parametrize(
    ("device", "pattern"),
    [("bogus", "invalid device 'bogus'"), ("meta", "not supported"), ("cuda", "CUDA is not available")],
)
def test_bad_device_raises(device, pattern):
    from genkit import Generator

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=pattern):
        Generator.from_pretrained(device=device)
