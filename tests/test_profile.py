"""`genkit profile`: the instrumented request produces generate()'s tokens and its parts add up to the step time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genkit.cli import main
from genkit.engine import Generator
from genkit.profiling import PARTS, build_report, profile_request

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy():
    return Generator.from_pretrained()


def check_parts(profile: dict) -> None:
    seconds = profile["seconds"]
    assert list(seconds) == list(PARTS)
    assert sum(seconds.values()) == pytest.approx(profile["step_s"], rel=1e-9, abs=1e-9)
    for part, value in seconds.items():
        assert value >= -1e-6, f"{part} = {value}"
    for part in ("model forward", "sampling", "stopping checks", "cache management"):
        assert seconds[part] > 0, part


def test_greedy_profile_matches_generate(toy):
    prompt = toy.encode_prompt("ROMEO:")
    expected = toy.generate(prompt, max_new_tokens=30, do_sample=False).token_ids

    profile = profile_request(toy, [prompt], max_new_tokens=30, do_sample=False)

    assert profile["token_ids"] == [expected]
    assert profile["steps"] == 29
    check_parts(profile)
    assert not toy.model._forward_hooks
    assert not toy.model._forward_pre_hooks


def test_sampled_profile_matches_generate(toy):
    options = dict(max_new_tokens=25, do_sample=True, top_k=8, top_p=0.9, temperature=0.8, repetition_penalty=1.2,
                   seed=7)
    prompt = toy.encode_prompt("ROMEO: and")
    expected = toy.generate(prompt, **options).token_ids

    profile = profile_request(toy, [prompt], **options)

    assert profile["token_ids"] == [expected]
    check_parts(profile)
    assert profile["seconds"]["logits processing"] > 0


def test_gpt2_batch_profile_matches_generate_batch(tiny_gpt2):
    generator = Generator.from_pretrained(tiny_gpt2().folder)
    prompts = [[5, 40, 77, 9], [100, 3, 250, 61]]
    expected = [r.token_ids for r in generator.generate_batch(prompts, max_new_tokens=12, min_new_tokens=12)]

    profile = profile_request(generator, prompts, max_new_tokens=12, min_new_tokens=12)

    assert profile["token_ids"] == expected
    check_parts(profile)


def test_report_shares_sum_to_one():
    profile = {"steps": 4, "step_s": 0.01, "token_ids": [[1]],
               "seconds": dict(zip(PARTS, (0.005, 0.001, 0.001, 0.0005, 0.0015, 0.001)))}

    report = build_report(profile, plain_step_s=0.002)

    assert sum(part["share"] for part in report["parts"]) == pytest.approx(1.0)
    assert report["step_mean_us"] == pytest.approx(2500.0)
    assert report["parts"][0]["mean_us"] == pytest.approx(1250.0)
    assert report["uninstrumented_step_mean_us"] == pytest.approx(2000.0)


def test_profile_command_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "profile"

    code = main(["profile", "--out", str(out), "--max-new-tokens", "20", "--threads", "1"])

    assert code == 0
    table = capsys.readouterr().out
    for part in PARTS:
        assert f"| {part} |" in table
    report = json.loads((out / "profile.json").read_text())
    assert report["steps"] == 19
    assert len(report["token_ids"][0]) == 20
    total = sum(part["total_s"] for part in report["parts"])
    assert total == pytest.approx(report["step_total_s"], rel=1e-6)
    assert report["uninstrumented_step_mean_us"] > 0
    assert (out / "profile.png").read_bytes().startswith(PNG_SIGNATURE)


def test_prompt_beyond_positions_rejected(tmp_path, capsys):
    code = main(["profile", "--out", str(tmp_path), "--prompt-length", "100", "--max-new-tokens", "40", "--no-plots"])

    assert code == 2
    assert "exceeds the model's 128 positions" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-length", "0"], "expected an integer >= 1"),
        (["--max-new-tokens", "x"], "invalid integer 'x'"),
        (["--prompt", "ab", "--prompt-length", "4"], "not allowed with argument"),
        (["--cache-options", "{block_size: 4}"], "argument --cache-options: invalid JSON '{block_size: 4}'"),
        (["--cache-options", "4"], "invalid value '4': expected a JSON object"),
    ],
)
def test_bad_flags_rejected(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--out", str(tmp_path), *flags])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unusable_output_folder_rejected_before_profiling(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    paths = [str(afile / "sub")]
    if Path("/proc/self").is_dir():  # procfs rejects new folders, even for root
        paths.append("/proc/genkitprofile")

    for out in paths:
        code = main(["profile", "--out", out, "--max-new-tokens", "5"])

        captured = capsys.readouterr()
        assert code == 2, out
        assert f"cannot create or write to the --out folder {out!r}" in captured.err
        assert "pass a writable folder path for profile.json and profile.png" in captured.err
        assert captured.out == "", "the request was profiled before the folder was checked"


def test_empty_output_path_rejected(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert main(["profile", "--out", "", "--max-new-tokens", "5", "--no-plots"]) == 2
    assert "invalid --out ''" in capsys.readouterr().err
    assert not (tmp_path / "profile.json").exists()


def test_compile_rejected_with_reason(tmp_path, capsys):
    out = tmp_path / "profile"

    assert main(["profile", "--out", str(out), "--compile", "--max-new-tokens", "5"]) == 2
    error = capsys.readouterr().err
    assert "genkit profile does not support --compile" in error
    assert "genkit bench --compile" in error
    assert not out.exists()


def test_cache_options_reach_the_paged_cache(tmp_path, toy):
    out = tmp_path / "profile"

    code = main(["profile", "--out", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--no-plots",
                 "--cache", "paged", "--cache-options", '{"block_size": 4}'])

    assert code == 0
    report = json.loads((out / "profile.json").read_text())
    generation = report["settings"]["generation"]
    assert generation["cache"] == "paged"
    assert generation["cache_options"] == {"block_size": 4}
    # Greedy by default, although the toy's generation_config samples.
    assert generation["do_sample"] is False
    prompt = toy.encode_prompt("ROMEO:")
    assert report["token_ids"] == [toy.generate(prompt, max_new_tokens=12, do_sample=False).token_ids]


def test_bad_cache_option_removes_new_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "profile"

    code = main(["profile", "--out", str(out), "--max-new-tokens", "5", "--no-plots", "--cache", "paged",
                 "--cache-options", '{"block_size": 0}'])

    assert code == 2
    assert "invalid cache_options block_size=0 for the 'paged' KV cache" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_do_sample_flag_samples_like_generate(tmp_path, toy):
    out = tmp_path / "profile"

    code = main(["profile", "--out", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--no-plots",
                 "--do-sample", "--top-k", "5", "--seed", "3"])

    assert code == 0
    report = json.loads((out / "profile.json").read_text())
    assert report["settings"]["generation"]["do_sample"] is True
    prompt = toy.encode_prompt("ROMEO:")
    expected = toy.generate(prompt, max_new_tokens=12, do_sample=True, top_k=5, seed=3).token_ids
    assert report["token_ids"] == [expected]
