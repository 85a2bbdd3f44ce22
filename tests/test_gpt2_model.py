"""genkit's GPT-2 against transformers' GPT2LMHeadModel on the same checkpoint files.

Logits must agree within 1e-4 (float32) at every position, whether the prompt runs
in one forward pass, token by token through each registered KV cache, or left-padded
in a batch. Greedy generation must be token-identical to ``generate(do_sample=False)``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil

import pytest
import torch

from genkit.config import GenerationConfig
from genkit.errors import CheckpointError
from genkit.models.gpt2 import ACTIVATIONS, GPT2
from genkit.models.loading import load_model
from genkit.registry import get_registry
from genkit.specs import RequestContext

ATOL = 1e-4
PROMPT_LENGTH = 64
# Only backends whose attention is exact can meet the 1e-4 bound; tests/test_caches.py
# measures the error of the others (int8).
CACHE_NAMES = sorted(name for name, entry in get_registry().caches.items() if entry.spec.exact)
ENGINE_MISSING = importlib.util.find_spec("genkit.engine") is None


def prompt_ids(vocab_size: int, batch: int = 1, length: int = PROMPT_LENGTH, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def hf_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return transformers' logits; with a mask, positions count real tokens only, as generate() does."""
    position_ids = None
    if attention_mask is not None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return output.logits.float()


def make_cache(name: str, loaded, batch_size: int, max_length: int):
    """Build a cache backend through its registered spec, as the planner does."""
    eos = loaded.tokenizer.eos_token_id
    context = RequestContext(
        config=GenerationConfig(cache=name),
        tokenizer=loaded.tokenizer,
        shape=loaded.shape,
        batch_size=batch_size,
        prompt_length=max_length,
        max_length=max_length,
        device=loaded.device,
        dtype=loaded.dtype,
        eos_token_ids=(eos,),
        pad_token_id=eos,
    )
    return get_registry().caches[name].spec.build(context)


def full_forward(loaded, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    batch, length = input_ids.shape
    if padding_mask is None:
        positions = torch.arange(length).expand(batch, length)
    else:
        positions = (padding_mask.cumsum(-1) - 1).clamp(min=0)
    cache = make_cache("concat", loaded, batch, length)
    return loaded.model(input_ids, positions, cache, padding_mask)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def checkpoint(tiny_gpt2):
    return tiny_gpt2()


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint.folder)


# Logits, single sequence.


def test_full_forward_matches_transformers(checkpoint, loaded):
    ids = prompt_ids(checkpoint.vocab_size)

    actual = full_forward(loaded, ids)

    assert_logits_close(actual, hf_logits(checkpoint.model, ids))


@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_token_by_token_matches_transformers(checkpoint, loaded, cache_name):
    ids = prompt_ids(checkpoint.vocab_size)
    cache = make_cache(cache_name, loaded, 1, PROMPT_LENGTH)

    steps = []
    for t in range(PROMPT_LENGTH):
        steps.append(loaded.model(ids[:, t : t + 1], torch.tensor([[t]]), cache, None))
    actual = torch.cat(steps, dim=1)

    assert cache.length() == PROMPT_LENGTH
    assert_logits_close(actual, hf_logits(checkpoint.model, ids))


@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_prefill_chunk_then_decode(checkpoint, loaded, cache_name):
    # A chunk after the prefill has past > 0 and new > 1: the only case that needs
    # an explicit causal mask without padding.
    ids = prompt_ids(checkpoint.vocab_size)
    cache = make_cache(cache_name, loaded, 1, PROMPT_LENGTH)
    bounds = [(0, 24), (24, 40)] + [(t, t + 1) for t in range(40, PROMPT_LENGTH)]

    steps = []
    for start, end in bounds:
        positions = torch.arange(start, end)[None, :]
        steps.append(loaded.model(ids[:, start:end], positions, cache, None))
    actual = torch.cat(steps, dim=1)

    assert_logits_close(actual, hf_logits(checkpoint.model, ids))


# Logits, left-padded batch.


def left_padded_batch(vocab_size: int, pad_id: int, lengths=(64, 41, 9)) -> tuple[torch.Tensor, torch.Tensor]:
    ids = prompt_ids(vocab_size, batch=len(lengths), length=max(lengths), seed=1)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, ids.shape[1] - length :] = 1
    ids = ids.masked_fill(mask == 0, pad_id)
    return ids, mask


def test_left_padded_batch_matches_transformers(checkpoint, loaded):
    ids, mask = left_padded_batch(checkpoint.vocab_size, loaded.tokenizer.eos_token_id)

    actual = full_forward(loaded, ids, mask)
    expected = hf_logits(checkpoint.model, ids, mask)

    real = mask.bool()  # logits at padding positions are never used
    assert_logits_close(actual[real], expected[real])


def test_left_padded_row_matches_unpadded_run(checkpoint, loaded):
    ids, mask = left_padded_batch(checkpoint.vocab_size, loaded.tokenizer.eos_token_id)
    row = 2
    real_ids = ids[row][mask[row].bool()][None, :]

    padded = full_forward(loaded, ids, mask)[row][mask[row].bool()]
    alone = full_forward(loaded, real_ids)[0]

    assert_logits_close(padded, alone)


@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_left_padded_decode_matches_transformers(checkpoint, loaded, cache_name):
    ids, mask = left_padded_batch(checkpoint.vocab_size, loaded.tokenizer.eos_token_id)
    batch, length = ids.shape
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefill = length - 16
    cache = make_cache(cache_name, loaded, batch, length)

    steps = [loaded.model(ids[:, :prefill], positions[:, :prefill], cache, mask[:, :prefill])]
    for t in range(prefill, length):
        steps.append(loaded.model(ids[:, t : t + 1], positions[:, t : t + 1], cache, mask[:, : t + 1]))
    actual = torch.cat(steps, dim=1)
    expected = hf_logits(checkpoint.model, ids, mask)

    real = mask.bool()
    assert_logits_close(actual[real], expected[real])


# Checkpoint variants.


def test_fp16_checkpoint_keeps_dtype(tiny_gpt2):
    checkpoint = tiny_gpt2(dtype=torch.float16)
    ids = prompt_ids(checkpoint.vocab_size)

    loaded = load_model(checkpoint.folder)
    actual = full_forward(loaded, ids)

    assert loaded.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in loaded.model.parameters())
    # Half-precision kernels of the two implementations round differently.
    torch.testing.assert_close(actual, hf_logits(checkpoint.model, ids), atol=2e-2, rtol=0)


def test_fp16_checkpoint_loads_as_fp32(tiny_gpt2):
    checkpoint = tiny_gpt2(dtype=torch.float16)
    ids = prompt_ids(checkpoint.vocab_size)
    reference = hf_logits(copy.deepcopy(checkpoint.model).float(), ids)

    loaded = load_model(checkpoint.folder, dtype=torch.float32)

    assert loaded.dtype == torch.float32
    assert_logits_close(full_forward(loaded, ids), reference)


def test_tied_weights_share_one_parameter(checkpoint, loaded):
    from safetensors import safe_open

    with safe_open(str(checkpoint.folder / "model.safetensors"), "pt") as weights:
        stored = set(weights.keys())

    assert "lm_head.weight" not in stored
    assert loaded.model.lm_head.weight is loaded.model.wte.weight


def test_untied_weights_load_separately(tiny_gpt2):
    checkpoint = tiny_gpt2(tie_word_embeddings=False)
    ids = prompt_ids(checkpoint.vocab_size)

    loaded = load_model(checkpoint.folder)

    assert loaded.model.lm_head.weight is not loaded.model.wte.weight
    assert not torch.equal(loaded.model.lm_head.weight, loaded.model.wte.weight)
    assert_logits_close(full_forward(loaded, ids), hf_logits(checkpoint.model, ids))


def test_tied_config_with_distinct_lm_head_keeps_both(tiny_gpt2, tmp_path):
    # transformers 5 leaves the weights untied when both are stored and differ.
    from safetensors.torch import load_file, save_file
    from transformers import GPT2LMHeadModel

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_gpt2().folder, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["lm_head.weight"] = torch.randn(state["transformer.wte.weight"].shape, generator=torch.Generator().manual_seed(0))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    reference = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    ids = prompt_ids(reference.config.vocab_size, length=16)

    loaded = load_model(folder)

    assert loaded.model.lm_head.weight is not loaded.model.wte.weight
    assert torch.equal(loaded.model.lm_head.weight, state["lm_head.weight"])
    assert_logits_close(full_forward(loaded, ids), hf_logits(reference, ids))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_matches_transformers(tiny_gpt2, activation):
    checkpoint = tiny_gpt2(activation_function=activation)
    ids = prompt_ids(checkpoint.vocab_size, length=16)

    loaded = load_model(checkpoint.folder)

    assert_logits_close(full_forward(loaded, ids), hf_logits(checkpoint.model, ids))


CONFIG_VARIANTS = {
    "n_inner": dict(n_inner=96),
    "no_attention_scaling": dict(scale_attn_weights=False),
    "inverse_layer_scaling": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "reorder_and_upcast": dict(reorder_and_upcast_attn=True),
    "layer_norm_epsilon": dict(layer_norm_epsilon=1e-2),
    "eight_heads": dict(n_head=8),
}


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_config_variant_matches_transformers(tiny_gpt2, variant):
    checkpoint = tiny_gpt2(**CONFIG_VARIANTS[variant])
    ids = prompt_ids(checkpoint.vocab_size, length=16)

    loaded = load_model(checkpoint.folder)
    cache = make_cache("concat", loaded, 1, 16)
    stepwise = torch.cat([loaded.model(ids[:, t : t + 1], torch.tensor([[t]]), cache) for t in range(16)], dim=1)

    expected = hf_logits(checkpoint.model, ids)
    assert_logits_close(full_forward(loaded, ids), expected)
    assert_logits_close(stepwise, expected)


def test_reorder_and_upcast_matches_eager_transformers(tiny_gpt2):
    # transformers honours reorder_and_upcast_attn only in its eager attention path.
    from transformers import GPT2LMHeadModel

    checkpoint = tiny_gpt2(reorder_and_upcast_attn=True)
    eager = GPT2LMHeadModel.from_pretrained(str(checkpoint.folder), attn_implementation="eager").eval()
    ids = prompt_ids(checkpoint.vocab_size, length=16)

    loaded = load_model(checkpoint.folder)

    assert_logits_close(full_forward(loaded, ids), hf_logits(eager, ids))


# Config checks.


def edited_copy(checkpoint, tmp_path, **fields):
    folder = tmp_path / "edited"
    shutil.copytree(checkpoint.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_unknown_activation_raises(checkpoint, tmp_path):
    folder = edited_copy(checkpoint, tmp_path, activation_function="swiglu_9000")

    with pytest.raises(CheckpointError, match="swiglu_9000") as error:
        load_model(folder)

    assert "gelu_new" in str(error.value)  # lists the supported ones


def test_cross_attention_config_raises(checkpoint, tmp_path):
    folder = edited_copy(checkpoint, tmp_path, add_cross_attention=True)

    with pytest.raises(CheckpointError, match="add_cross_attention"):
        load_model(folder)


def test_heads_not_dividing_width_raises(checkpoint, tmp_path):
    folder = edited_copy(checkpoint, tmp_path, n_head=5)

    with pytest.raises(CheckpointError, match="n_head=5"):
        load_model(folder)


INVALID_FIELDS = [
    ("layer_norm_epsilon", "x", "a finite number > 0"),
    ("layer_norm_epsilon", -1, "a finite number > 0"),
    ("layer_norm_epsilon", 0, "a finite number > 0"),
    ("layer_norm_epsilon", float("nan"), "a finite number > 0"),
    ("layer_norm_epsilon", float("inf"), "a finite number > 0"),
    ("layer_norm_epsilon", True, "a finite number > 0"),
    ("scale_attn_weights", "false", "a JSON boolean"),
    ("scale_attn_weights", 0, "a JSON boolean"),
    ("scale_attn_by_inverse_layer_idx", "true", "a JSON boolean"),
    ("tie_word_embeddings", "no", "a JSON boolean"),
    ("add_cross_attention", "false", "a JSON boolean"),
    ("n_layer", "2", "a positive integer"),
    ("n_layer", 2.0, "a positive integer"),
    ("n_layer", -1, "a positive integer"),
    ("n_embd", True, "a positive integer"),
    ("vocab_size", None, "a positive integer"),
    ("n_positions", [128], "a positive integer"),
    ("n_head", 0, "a positive integer"),
    ("n_inner", 0, "a positive integer, or null"),
    ("n_inner", "96", "a positive integer, or null"),
    ("activation_function", ["gelu_new"], "a string"),
    ("activation_function", None, "a string"),
    ("eos_token_id", "259", "a token id >= 0"),
    ("eos_token_id", -1, "a token id >= 0"),
    ("eos_token_id", [259, None], "a token id >= 0"),
]


@pytest.mark.parametrize("field, value, expected", INVALID_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in INVALID_FIELDS])
def test_invalid_config_field_raises(checkpoint, tmp_path, field, value, expected):
    folder = edited_copy(checkpoint, tmp_path, **{field: value})

    with pytest.raises(CheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert f"invalid {field}={value!r} in {folder / 'config.json'}" in message
    assert f"expected {expected}" in message


@pytest.mark.parametrize(
    "fields",
    [
        {"layer_norm_epsilon": 1},  # a JSON integer is a number too
        {"n_inner": None, "tie_word_embeddings": None},  # null means the default
        {"eos_token_id": [259, 3]},
        {"eos_token_id": None},
    ],
    ids=["integer-epsilon", "nulls", "eos-list", "eos-null"],
)
def test_valid_config_edge_values_load(checkpoint, tmp_path, fields):
    folder = edited_copy(checkpoint, tmp_path, **fields)

    loaded = load_model(folder)

    assert loaded.shape.n_layers == 2


def test_model_shape_from_config(checkpoint, loaded):
    config = checkpoint.model.config

    shape = loaded.shape

    assert shape.n_layers == config.n_layer
    assert shape.n_heads == config.n_head
    assert shape.head_dim == config.n_embd // config.n_head
    assert shape.vocab_size == config.vocab_size
    assert shape.max_positions == config.n_positions


# A vocabulary padded beyond the tokenizer.


PADDED_VOCAB = 300  # the byte-level test tokenizer has 260 tokens


def test_padded_vocab_warns_once(tiny_gpt2, caplog):
    checkpoint = tiny_gpt2(vocab_size=PADDED_VOCAB)

    with caplog.at_level(logging.WARNING, logger="genkit"):
        loaded = load_model(checkpoint.folder)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "has 260 tokens but the model's vocab_size is 300" in warnings[0]
    assert "ids 260 to 299" in warnings[0]
    assert loaded.shape.vocab_size == PADDED_VOCAB
    assert loaded.tokenizer.vocab_size == 260


def test_padded_ids_decode_to_nothing(tiny_gpt2):
    tokenizer = load_model(tiny_gpt2(vocab_size=PADDED_VOCAB).folder).tokenizer
    text_ids = tokenizer.encode("the cat")

    assert tokenizer.decode([260]) == ""
    assert tokenizer.decode([PADDED_VOCAB - 1, *text_ids, 2**40, -1]) == "the cat"


def test_padded_vocab_generates_without_crash(tiny_gpt2):
    from genkit.engine import Generator

    generator = Generator.from_pretrained(tiny_gpt2(vocab_size=PADDED_VOCAB).folder)
    # A high temperature makes sampling near uniform, so some of the 40 padded ids come up.
    result = generator.generate("the", max_new_tokens=60, do_sample=True, temperature=100.0, seed=0)

    padded = [i for i in result.token_ids if i >= 260]
    assert padded
    assert result.text == generator.loaded.tokenizer.decode(result.token_ids)
    events = generator.stream("the", max_new_tokens=60, do_sample=True, temperature=100.0, seed=0)
    assert "".join(event.text for event in events) == result.text


def test_loaded_model_is_inference_only(checkpoint, loaded):
    ids = prompt_ids(checkpoint.vocab_size, length=4)

    logits = full_forward(loaded, ids)

    assert isinstance(loaded.model, GPT2)
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert logits.grad_fn is None


# Greedy generation through the engine against transformers' generate().


def hf_greedy_batch(checkpoint, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Return transformers' greedy tokens per prompt, left-padded as a batch, cut after the first eos."""
    eos = checkpoint.model.config.eos_token_id
    longest = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[eos] * (longest - len(ids)) + ids for ids in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts])
    with torch.no_grad():
        output = checkpoint.model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=eos,
        )
    results = []
    for row in output[:, longest:].tolist():
        results.append(row[: row.index(eos) + 1] if eos in row else row)
    return results


def expected_finish_reason(checkpoint, tokens: list[int]) -> str:
    return "eos" if tokens[-1] == checkpoint.model.config.eos_token_id else "length"


@pytest.mark.skipif(ENGINE_MISSING, reason="genkit.engine is not there yet")
@pytest.mark.parametrize("cache_name", CACHE_NAMES)
@pytest.mark.parametrize("prompt_seed", [0, 2])
def test_greedy_ids_match_transformers(checkpoint, cache_name, prompt_seed):
    from genkit.engine import Generator

    ids = prompt_ids(checkpoint.vocab_size, length=16, seed=prompt_seed).tolist()[0]
    expected = hf_greedy_batch(checkpoint, [ids], 64)[0]

    result = Generator.from_pretrained(checkpoint.folder).generate(
        ids, max_new_tokens=64, do_sample=False, cache=cache_name
    )

    assert len(set(expected)) > 10  # a model that repeats one token would hide cache bugs
    assert result.token_ids == expected
    assert result.finish_reason == expected_finish_reason(checkpoint, expected)


@pytest.mark.skipif(ENGINE_MISSING, reason="genkit.engine is not there yet")
@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_greedy_batch_matches_transformers(checkpoint, cache_name):
    from genkit.engine import Generator

    prompts = [prompt_ids(checkpoint.vocab_size, length=length, seed=3 + length).tolist()[0] for length in (16, 9, 4)]
    expected = hf_greedy_batch(checkpoint, prompts, 32)

    results = Generator.from_pretrained(checkpoint.folder).generate_batch(
        prompts, max_new_tokens=32, do_sample=False, cache=cache_name
    )

    for result, tokens in zip(results, expected):
        assert result.token_ids == tokens
        assert result.finish_reason == expected_finish_reason(checkpoint, tokens)


@pytest.mark.skipif(ENGINE_MISSING, reason="genkit.engine is not there yet")
@pytest.mark.parametrize("cache_name", CACHE_NAMES)
def test_greedy_text_matches_transformers(tiny_gpt2, cache_name):
    from genkit.engine import Generator
    from transformers import AutoTokenizer

    checkpoint = tiny_gpt2(tokenizer="gpt2")
    hf_tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder))
    prompt = "ROMEO:\nWhat light through yonder window breaks?"
    expected = hf_greedy_batch(checkpoint, [hf_tokenizer.encode(prompt)], 64)[0]

    result = Generator.from_pretrained(checkpoint.folder).generate(
        prompt, max_new_tokens=64, do_sample=False, cache=cache_name
    )

    assert result.token_ids == expected
    assert result.text == hf_tokenizer.decode(expected, skip_special_tokens=True)
    assert result.finish_reason == expected_finish_reason(checkpoint, expected)
