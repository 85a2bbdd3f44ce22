"""`genkit generate` flags: each reaches GenerationConfig under its field name and type.

The parser tests call ``build_parser().parse_args`` and ``generation_kwargs`` and
need no model. The error tests run ``python -m genkit.cli`` in a subprocess, because
only a real process shows the exit status and whether a traceback reaches stderr.
The output tests call ``genkit.cli.main`` in-process on a tiny GPT-2 checkpoint
with the self-contained byte-level tokenizer, so they need no shared data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genkit.cli import GENERATION_FLAGS, build_parser, generation_kwargs, main
from genkit.config import GenerationConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

# field -> (command-line value, value expected in the kwargs and in GenerationConfig).
# Every entry of GENERATION_FLAGS needs a row, which test_every_flag_has_a_sample enforces.
FLAG_SAMPLES: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("7", 7),
    "max_length": ("30", 30),
    "min_length": ("12", 12),
    "min_new_tokens": ("3", 3),
    "max_time": ("1.5", 1.5),
    "temperature": ("0.7", 0.7),
    "top_k": ("5", 5),
    "top_p": ("0.9", 0.9),
    "min_p": ("0.05", 0.05),
    "typical_p": ("0.8", 0.8),
    "epsilon_cutoff": ("0.001", 0.001),
    "eta_cutoff": ("0.002", 0.002),
    "repetition_penalty": ("1.2", 1.2),
    "no_repeat_ngram_size": ("3", 3),
    "bad_words_ids": ("[[464, 3290], [50256]]", [[464, 3290], [50256]]),
    "sequence_bias": ("[[[464], -2.0], [[3290, 11], 1.5]]", [[[464], -2.0], [[3290, 11], 1.5]]),
    "suppress_tokens": ("[198, 628]", [198, 628]),
    "presence_penalty": ("0.5", 0.5),
    "frequency_penalty": ("-0.5", -0.5),
    "logit_bias": ('{"50256": -100, "11": 2.5}', {50256: -100, 11: 2.5}),
    "mirostat": ("2", 2),
    "mirostat_tau": ("4.0", 4.0),
    "mirostat_eta": ("0.2", 0.2),
    "dry_multiplier": ("0.8", 0.8),
    "dry_base": ("1.5", 1.5),
    "dry_allowed_length": ("3", 3),
    "dry_penalty_last_n": ("64", 64),
    "dry_sequence_breakers": ('["\\n", ":"]', ["\n", ":"]),
    "pad_token_id": ("0", 0),
    "seed": ("42", 42),
    "sampler": ("multinomial", "multinomial"),
    "cache": ("static", "static"),
}

# Flags outside GENERATION_FLAGS: command-line words -> {field: expected value}.
EXTRA_FLAG_SAMPLES: list[tuple[list[str], dict[str, Any]]] = [
    (["--do-sample"], {"do_sample": True}),
    (["--greedy"], {"do_sample": False}),
    (["--eos-token-id", "11"], {"eos_token_id": 11}),
    (["--eos-token-id", "11", "--eos-token-id", "13"], {"eos_token_id": [11, 13]}),
    (["--stop", "\n\n"], {"stop_strings": ["\n\n"]}),
    (["--stop", "END", "--stop", "###"], {"stop_strings": ["END", "###"]}),
    (["--stop", "END", "--include-stop-str-in-output"], {"stop_strings": ["END"], "include_stop_str_in_output": True}),
    (["--logits-processor", "top_k"], {"logits_processors": ["top_k"]}),
    (["--logits-processor", "top_k", "--logits-processor", "dry"], {"logits_processors": ["top_k", "dry"]}),
    (["--stopping-criterion", "eos"], {"stopping_criteria": ["eos"]}),
    (["--sampler-options", '{"tau": 0.5}'], {"sampler_options": {"tau": 0.5}}),
    (["--cache-options", "{}"], {"cache_options": {}}),
]

# Fields whose flag is not the field name with dashes, and why.
RENAMED_FLAGS = {
    # The short --stop is given once per stop string.
    "stop_strings": "--stop",
    # Repeatable flags take one item each, so they are named in the singular.
    "logits_processors": "--logits-processor",
    "stopping_criteria": "--stopping-criterion",
}

# GenerationConfig fields left without a flag on purpose, each with the reason. None at present.
NOT_ON_CLI: dict[str, str] = {}


def parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(["generate", "a prompt", *words])


def generate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["generate"]
    raise AssertionError("build_parser() has no subcommands")


def flags_by_field() -> dict[str, list[str]]:
    """Map each destination of the generate parser to its option strings."""
    flags: dict[str, list[str]] = {}
    for action in generate_parser()._actions:
        flags.setdefault(action.dest, []).extend(action.option_strings)
    return flags


# Flag -> field name and type.


@pytest.mark.parametrize("field", [name for name, _, _ in GENERATION_FLAGS])
def test_flag_reaches_config(field):
    text, expected = FLAG_SAMPLES[field]

    kwargs = generation_kwargs(parse("--" + field.replace("_", "-"), text))
    config = GenerationConfig.build(None, None, **kwargs)

    assert kwargs == {field: expected}
    assert type(kwargs[field]) is type(expected)
    assert getattr(config, field) == expected
    assert type(getattr(config, field)) is type(expected)


def test_logit_bias_keys_become_ints():
    kwargs = generation_kwargs(parse("--logit-bias", FLAG_SAMPLES["logit_bias"][0]))

    assert all(type(token) is int for token in kwargs["logit_bias"])


def sample_id(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else ""


@pytest.mark.parametrize(("words", "expected"), EXTRA_FLAG_SAMPLES, ids=sample_id)
def test_extra_flag_reaches_config(words, expected):
    kwargs = generation_kwargs(parse(*words))
    config = GenerationConfig.build(None, None, **kwargs)

    assert kwargs == expected
    for field, value in expected.items():
        assert getattr(config, field) == value, field
        assert type(getattr(config, field)) is type(value), field


def test_unset_flags_leave_kwargs_empty():
    assert generation_kwargs(parse()) == {}


def test_do_sample_and_greedy_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--do-sample", "--greedy")

    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# Meta-checks between GENERATION_FLAGS, the parser and GenerationConfig.


def test_every_flag_has_a_sample():
    flag_fields = {name for name, _, _ in GENERATION_FLAGS}

    assert flag_fields - set(FLAG_SAMPLES) == set(), "add a row to FLAG_SAMPLES for each new flag"


def test_every_sample_is_a_config_field():
    # A row may wait for its flag (test_config_field_has_flag names the missing ones),
    # but it must name a real field.
    assert set(FLAG_SAMPLES) - set(GenerationConfig.field_names()) == set()


def test_every_flag_is_a_config_field():
    fields = set(GenerationConfig.field_names())
    extra_fields = {field for _, expected in EXTRA_FLAG_SAMPLES for field in expected}

    assert {name for name, _, _ in GENERATION_FLAGS} - fields == set()
    assert extra_fields - fields == set()


@pytest.mark.parametrize("field", GenerationConfig.field_names())
def test_config_field_has_flag(field):
    if field in NOT_ON_CLI:
        pytest.skip(f"{field} has no flag: {NOT_ON_CLI[field]}")
    flags = flags_by_field()
    expected_flag = RENAMED_FLAGS.get(field, "--" + field.replace("_", "-"))

    assert field in flags, f"GenerationConfig.{field} has no `genkit generate` flag"
    assert expected_flag in flags[field]


def test_flag_exceptions_name_real_fields():
    fields = set(GenerationConfig.field_names())

    assert set(NOT_ON_CLI) <= fields
    assert set(RENAMED_FLAGS) <= fields


# Bad values: exit status 2 and one `genkit: error:` line, no traceback.


@pytest.fixture(scope="module")
def checkpoint_folder(tiny_gpt2) -> Path:
    return tiny_gpt2().folder


def run_cli(*words: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "genkit.cli", *words], capture_output=True, text=True, timeout=120, env=env
    )


BAD_VALUES = {
    "logit_bias_not_json": (["--logit-bias", "notjson"], "logit_bias"),
    "top_p_above_one": (["--top-p", "2"], "top_p=2.0"),
    "temperature_zero_when_sampling": (["--temperature", "0", "--do-sample"], "temperature=0.0"),
    "max_new_tokens_not_int": (["--max-new-tokens", "many"], "max-new-tokens"),
    "sequence_bias_without_bias": (["--sequence-bias", "[[1]]"], "sequence_bias"),
    "dry_breakers_not_a_list": (["--dry-sequence-breakers", "5"], "dry_sequence_breakers"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_prints_one_error_line(checkpoint_folder, case):
    words, named = BAD_VALUES[case]

    completed = run_cli("generate", "--model", str(checkpoint_folder), "a prompt", "--max-new-tokens", "2", *words)
    lines = completed.stderr.strip().splitlines()

    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("genkit: error: ")
    assert named in lines[0]
    assert completed.stdout == ""


IN_PROCESS_BAD_VALUES = {
    "logit_bias_list": (["--logit-bias", "[1, 2]"], "logit_bias"),
    "logit_bias_text_key": (["--logit-bias", '{"a": 1}'], "logit_bias"),
    "bad_words_flat_list": (["--bad-words-ids", "[1, 2]"], "bad_words_ids"),
    "suppress_tokens_object": (["--suppress-tokens", '{"a": 1}'], "suppress_tokens"),
    "sequence_bias_flat_pair": (["--sequence-bias", "[[5, 1.0]]"], "sequence_bias"),
    "eos_outside_vocabulary": (["--eos-token-id", "999999"], "eos_token_id=999999"),
    "unknown_cache": (["--cache", "no_such_cache"], "no_such_cache"),
    "unknown_sampler": (["--sampler", "no_such_sampler"], "no_such_sampler"),
    "unknown_processor": (["--logits-processor", "no_such_processor"], "no_such_processor"),
    "empty_stop_string": (["--stop", ""], "stop_strings"),
    "top_k_negative": (["--top-k", "-1"], "top_k=-1"),
    "mirostat_one": (["--mirostat", "1"], "mirostat=1"),
    "sampler_options_list": (["--sampler-options", "[1]"], "sampler_options"),
}


@pytest.mark.parametrize("case", sorted(IN_PROCESS_BAD_VALUES))
def test_bad_value_returns_two(checkpoint_folder, capsys, case):
    words, named = IN_PROCESS_BAD_VALUES[case]

    status = main(["generate", "--model", str(checkpoint_folder), "a prompt", "--max-new-tokens", "2", *words])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()

    assert status == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("genkit: error: ")
    assert named in lines[0]
    assert captured.out == ""


def test_missing_model_prints_one_error_line(tmp_path):
    completed = run_cli("generate", "--model", str(tmp_path / "absent"), "a prompt")

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("genkit: error: ")
    assert len(completed.stderr.strip().splitlines()) == 1


# Output: --json, --stop and --stream.


def run_main(capsys, *words: str) -> tuple[int, str, str]:
    status = main(["generate", *words])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_reports_finish_reason_per_prompt(checkpoint_folder, capsys):
    prompts = ["The east", "It is the sun and moon"]
    _, first_run, _ = run_main(capsys, "--model", str(checkpoint_folder), *prompts, "--max-new-tokens", "8", "--json")
    eos = [json.loads(line) for line in first_run.splitlines()][1]["token_ids"][2]  # stops the second prompt after 3 tokens

    status, out, _ = run_main(
        capsys, "--model", str(checkpoint_folder), *prompts, "--max-new-tokens", "8", "--json",
        "--eos-token-id", str(eos),
    )
    results = [json.loads(line) for line in out.splitlines()]

    assert status == 0
    assert len(results) == 2
    assert all(result["model"] for result in results)
    assert [result["sequence"] for result in results] == [0, 1]
    assert [result["prompt"] for result in results] == prompts
    assert all(result["prompt_token_ids"] for result in results)
    assert results[1]["finish_reason"] == "eos"
    assert results[1]["token_ids"][-1] == eos
    assert len(results[1]["token_ids"]) <= 3
    assert results[0]["finish_reason"] == ("eos" if eos in results[0]["token_ids"] else "length")


def test_json_single_prompt_is_one_object(checkpoint_folder, capsys):
    status, out, _ = run_main(capsys, "--model", str(checkpoint_folder), "The east", "--max-new-tokens", "5", "--json")
    payload = json.loads(out)

    assert status == 0
    assert payload["finish_reason"] == "length"
    assert len(payload["token_ids"]) == 5
    assert payload["stats"]["generated_tokens"] == 5


def test_stop_with_json_cuts_text(checkpoint_folder, capsys):
    common = ["--model", str(checkpoint_folder), "The east", "--max-new-tokens", "24", "--json"]
    _, out, _ = run_main(capsys, *common)
    full_text = json.loads(out)["text"]
    stop = full_text[10:13]

    status, out, _ = run_main(capsys, *common, "--stop", stop)
    cut = json.loads(out)
    _, out, _ = run_main(capsys, *common, "--stop", stop, "--include-stop-str-in-output")
    with_stop = json.loads(out)

    assert status == 0
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full_text[: full_text.index(stop)]
    assert with_stop["text"] == full_text[: full_text.index(stop) + len(stop)]
    assert len(cut["token_ids"]) < 24


def test_stream_text_equals_json_text(checkpoint_folder, capsys):
    common = ["--model", str(checkpoint_folder), "The east", "--max-new-tokens", "24", "--greedy"]

    _, json_out, _ = run_main(capsys, *common, "--json")
    status, stream_out, stream_err = run_main(capsys, *common, "--stream")
    text = json.loads(json_out)["text"]

    assert status == 0
    assert stream_out == "The east" + text + "\n"
    assert "finish: length" in stream_err


def test_stream_json_events_match_json(checkpoint_folder, capsys):
    common = ["--model", str(checkpoint_folder), "The east", "--max-new-tokens", "12", "--greedy", "--json"]

    _, json_out, _ = run_main(capsys, *common)
    status, stream_out, _ = run_main(capsys, *common, "--stream")
    expected = json.loads(json_out)
    lines = [json.loads(line) for line in stream_out.splitlines()]
    tokens = [line for line in lines if line["event"] == "token"]
    done = [line for line in lines if line["event"] == "done"]

    assert status == 0
    assert [event["token_id"] for event in tokens] == expected["token_ids"]
    assert "".join(event["text"] for event in tokens) == expected["text"]
    assert [event["finish_reason"] for event in tokens] == [None] * 11 + ["length"]
    assert len(done) == 1
    assert done[0]["text"] == expected["text"]


def test_stream_holds_back_stop_string(checkpoint_folder, capsys):
    common = ["--model", str(checkpoint_folder), "The east", "--max-new-tokens", "24", "--greedy"]
    _, json_out, _ = run_main(capsys, *common, "--json")
    full_text = json.loads(json_out)["text"]
    stop = full_text[10:13]

    _, stream_out, _ = run_main(capsys, *common, "--stream", "--stop", stop)

    assert stream_out == "The east" + full_text[: full_text.index(stop)] + "\n"
