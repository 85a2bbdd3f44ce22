"""`genkit bench`: sweeps on real models, the JSON report, the plots, the byte counts and bad input.

Speed is not checked here: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from genkit.benchmark import plan_cells
from genkit.cli import main
from genkit.errors import ConfigError
from genkit.hardware import kv_bytes_per_position, measure_memory_bandwidth, weight_bytes_per_step
from genkit.plots import draw_latency_breakdown, require_matplotlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("latency_breakdown.png", "throughput.png", "decode_fraction.png", "latency_vs_gen_length.png")
RUN_FIELDS = ("ttft_s", "prefill_s", "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s", "itl_p50_s",
              "itl_p99_s", "total_s", "decode_fraction")


def run_bench(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "out"
    code = main(["bench", "--out", str(out), "--bandwidth-mib", "8", "--threads", "1", *flags])
    assert code == 0
    return json.loads((out / "bench.json").read_text())


def check_run_values(run: dict) -> None:
    for name in RUN_FIELDS:
        assert run[name] > 0, f"{name} = {run[name]} in {run}"
    assert run["itl_p50_s"] <= run["itl_p99_s"]
    assert run["prefill_s"] <= run["ttft_s"] + 1e-9
    # The total is TTFT plus the decode steps plus the gaps between steps. The
    # tests run at most two repeats, whose median is the mean, so the sum holds for medians.
    assert run["total_s"] >= run["ttft_s"] + run["decode_s"] - 1e-9
    assert run["total_s"] == pytest.approx(run["ttft_s"] + run["decode_s"] + run["other_s"], abs=1e-9)
    # A loaded machine can pause the process between steps, so the gaps get a wide bound.
    assert run["other_s"] < 0.1 + 0.5 * run["total_s"]
    assert 0 < run["decode_fraction"] <= 1
    expected_prefill_rate = run["batch_size"] * run["prompt_length"] / run["prefill_s"]
    assert run["prefill_tokens_per_s"] == pytest.approx(expected_prefill_rate)
    assert len(run["total_s_samples"]) >= 1


def test_toy_sweep_report_and_plots(tmp_path):
    report = run_bench(tmp_path, "--prompt-lengths", "4,8", "--gen-lengths", "3,6", "--repeats", "2")

    assert report["schema"] == "genkit-bench/1"
    assert report["model"]["model_type"] == "genkit-toy"
    assert report["settings"]["prompt_lengths"] == [4, 8]
    assert report["settings"]["gen_lengths"] == [3, 6]
    assert report["bandwidth"]["bytes_per_s"] > 0
    assert report["comparison"] == []
    cells = [(run["prompt_length"], run["gen_length"]) for run in report["runs"]]
    assert cells == [(4, 3), (4, 6), (8, 3), (8, 6)]

    # The toy stores 2 layers x 4 heads x 32 dims of float32 keys and values per position.
    per_position = 2 * 2 * 4 * 32 * 4
    for run in report["runs"]:
        check_run_values(run)
        assert run["implementation"] == "genkit"
        # The default static cache reserves prompt + new positions from the start.
        assert run["kv_cache_bytes"] == (run["prompt_length"] + run["gen_length"]) * per_position
        traffic = run["bytes_per_decode_step"]
        assert traffic["total_bytes"] == traffic["weight_bytes"] + traffic["kv_cache_bytes"]
        assert 0 < run["bandwidth_fraction"]

    assert report["settings"]["compile"] is False
    assert report["settings"]["cache_options"] == {}
    for name in PLOTS:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 5000, name
    check_latency_breakdown_layout(report)


def check_latency_breakdown_layout(report: dict) -> None:
    """The tallest stacked bar stays below the top of the axes, and the legend covers no bar."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        tallest = draw_latency_breakdown(ax, report)
        fig.canvas.draw()
        assert tallest == pytest.approx(max(run["total_s"] for run in report["runs"]) * 1000, rel=1e-6)
        bottom, top = ax.get_ylim()
        assert bottom == 0
        assert top >= tallest * 1.15 * (1 - 1e-9)
        legend_box = ax.get_legend().get_window_extent()
        axes_box = ax.get_window_extent()
        assert legend_box.x0 >= axes_box.x1, "the legend overlaps the axes"
    finally:
        plt.close(fig)


def test_gpt2_compare_transformers_tokens_match(tmp_path, tiny_gpt2):
    checkpoint = tiny_gpt2()
    report = run_bench(tmp_path, "--model", str(checkpoint.folder), "--prompt-lengths", "5,9", "--gen-lengths", "8",
                       "--repeats", "1", "--warmup", "0", "--compare", "transformers", "--no-plots",
                       "--batch-size", "2")

    implementations = [run["implementation"] for run in report["runs"]]
    assert implementations == ["genkit", "transformers", "genkit", "transformers"]
    for run in report["runs"]:
        check_run_values(run)
        assert run["batch_size"] == 2
    assert len(report["comparison"]) == 2
    for entry in report["comparison"]:
        assert entry["tokens_checked"] is True
        assert entry["fraction_identical"] == 1.0
        assert entry["first_difference"] is None
        for name in ("ttft_speedup", "decode_tokens_per_s_ratio", "total_speedup"):
            assert entry[name] > 0
    assert not list((tmp_path / "out").glob("*.png"))


def test_toy_compare_uses_random_transformers_model(tmp_path, capsys):
    report = run_bench(tmp_path, "--prompt-lengths", "4", "--gen-lengths", "4", "--repeats", "1", "--warmup", "0",
                       "--compare", "transformers", "--no-plots")

    entry = report["comparison"][0]
    assert entry["tokens_checked"] is False
    assert "fraction_identical" not in entry
    assert any("RANDOM weights" in note for note in report["notes"])
    assert "RANDOM weights" in capsys.readouterr().out


def test_bfloat16_reports_agreement_with_float32(tmp_path, tiny_gpt2):
    checkpoint = tiny_gpt2()
    report = run_bench(tmp_path, "--model", str(checkpoint.folder), "--prompt-lengths", "6", "--gen-lengths", "10",
                       "--repeats", "1", "--warmup", "0", "--dtype", "bfloat16", "--no-plots")

    assert report["model"]["dtype"] == "bfloat16"
    (entry,) = report["dtype_agreement"]
    assert 0.0 <= entry["fraction_identical"] <= 1.0
    if entry["fraction_identical"] < 1.0:
        assert 0 <= entry["first_difference"] < 10
    # bfloat16 keys and values take 2 bytes: the static cache's (6 + 10) positions x 2 layers x 64 dims
    # x 2 (k, v) x 2 bytes.
    assert report["runs"][0]["kv_cache_bytes"] == 16 * 2 * 64 * 2 * 2


def test_toy_shape_builds_random_model(tmp_path):
    report = run_bench(tmp_path, "--toy-shape", "1,32,2", "--prompt-lengths", "4", "--gen-lengths", "3",
                       "--repeats", "1", "--warmup", "0", "--no-plots")

    model = report["model"]
    assert (model["n_layers"], model["n_heads"], model["head_dim"]) == (1, 2, 16)
    assert "random weights" in model["description"]
    check_run_values(report["runs"][0])


def test_default_lengths_skip_cells_that_do_not_fit():
    cells, skipped = plan_cells([16, 32, 64, 128, 256], [25, 50, 100, 200], 128, explicit=False)

    assert (16, 100) in cells
    assert (16, 200) in skipped
    assert (128, 25) in skipped
    assert all(p + g <= 129 for p, g in cells)
    assert len(cells) + len(skipped) == 20


def test_explicit_lengths_beyond_positions_rejected():
    with pytest.raises(ConfigError, match="exceeds the model's 128 positions"):
        plan_cells([100], [50], 128, explicit=True)
    with pytest.raises(ConfigError, match="no cell of the sweep fits"):
        plan_cells([256], [25], 128, explicit=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-lengths", "0"], "every length must be >= 1"),
        (["--prompt-lengths", "8,abc"], "invalid length 'abc'"),
        (["--gen-lengths", "-3"], "invalid length"),
        (["--compare", "vllm"], "invalid choice: 'vllm'"),
        (["--repeats", "0"], "expected an integer >= 1"),
        (["--toy-shape", "2,130,4"], "EMBD a multiple of HEADS"),
        (["--toy-shape", "2,128"], "expected three integers"),
        (["--cache-options", "{block_size: 4}"], "argument --cache-options: invalid JSON '{block_size: 4}'"),
        (["--cache-options", "[4]"], "invalid value '[4]': expected a JSON object"),
    ],
)
def test_bad_flags_rejected(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--out", str(tmp_path), *flags])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-lengths", "100", "--gen-lengths", "50"], "exceeds the model's 128 positions"),
        (["--prompt-lengths", "4", "--gen-lengths", "4", "--cache", "nonexistent"], "nonexistent"),
        (["--prompt-lengths", "4", "--gen-lengths", "4", "--cache", "paged", "--cache-options", '{"blok": 3}'],
         "unknown cache_options ['blok'] for the 'paged' KV cache; it accepts: block_size, num_blocks"),
    ],
)
def test_bad_values_reported_as_errors(tmp_path, capsys, flags, message):
    code = main(["bench", "--out", str(tmp_path / "out"), "--no-plots", "--bandwidth-mib", "0", *flags])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_rejected(tmp_path, capsys):
    target = tmp_path / "bench.json"
    target.write_text("{}")

    assert main(["bench", "--out", str(target), "--prompt-lengths", "4", "--gen-lengths", "4"]) == 2
    assert "is a file" in capsys.readouterr().err


def unwritable_paths(tmp_path: Path) -> list[str]:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    paths = [str(afile / "sub")]
    if Path("/proc/self").is_dir():  # procfs rejects new folders, even for root
        paths.append("/proc/genkitbench")
    return paths


def test_unusable_output_folder_rejected_before_sweep(tmp_path, capsys):
    for out in unwritable_paths(tmp_path):
        code = main(["bench", "--out", out, "--prompt-lengths", "4", "--gen-lengths", "4", "--repeats", "1"])

        captured = capsys.readouterr()
        assert code == 2, out
        assert f"cannot create or write to the --out folder {out!r}" in captured.err
        assert "pass a writable folder path for bench.json and the plots" in captured.err
        assert "Traceback" not in captured.err
        assert captured.out == "", "the sweep ran before the folder was checked"


def test_empty_output_path_rejected(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert main(["bench", "--out", "", "--prompt-lengths", "4", "--gen-lengths", "4", "--no-plots"]) == 2
    assert "invalid --out ''" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_output_folder_created_with_parents(tmp_path):
    report = run_bench(tmp_path / "new" / "nested", "--prompt-lengths", "4", "--gen-lengths", "3", "--repeats", "1",
                       "--warmup", "0", "--no-plots")

    assert report["runs"][0]["gen_length"] == 3


def test_paged_cache_options_reach_the_cache(tmp_path):
    report = run_bench(tmp_path, "--prompt-lengths", "4", "--gen-lengths", "4", "--repeats", "1", "--warmup", "0",
                       "--no-plots", "--cache", "paged", "--cache-options", '{"block_size": 3}')

    assert report["settings"]["cache"] == "paged"
    assert report["settings"]["cache_options"] == {"block_size": 3}
    # 4 + 4 - 1 = 7 positions fill ceil(7 / 3) = 3 blocks of 3 positions; the toy
    # stores 2 layers x 4 heads x 32 dims x 2 (k, v) x 4 bytes = 2048 bytes per position.
    assert report["runs"][0]["kv_cache_bytes"] == 3 * 3 * 2048


def test_compile_without_warmup_warns(tmp_path, capsys):
    report = run_bench(tmp_path, "--prompt-lengths", "4", "--gen-lengths", "3", "--repeats", "1", "--warmup", "0",
                       "--no-plots", "--compile")

    captured = capsys.readouterr()
    assert report["settings"]["compile"] is True
    assert report["settings"]["cache"] == "graph"
    warning = [line for line in captured.err.splitlines() if line.startswith("genkit: warning:")]
    assert len(warning) == 1
    assert "first run of each new shape includes the torch.compile compilation" in warning[0]
    assert any("first run of each new shape includes" in note for note in report["notes"])


def test_missing_matplotlib_named_with_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError

    code = main(["bench", "--out", str(tmp_path / "out"), "--prompt-lengths", "4", "--gen-lengths", "4"])

    assert code == 2
    assert "pip install 'genkit[plots]'" in capsys.readouterr().err


def test_weight_bytes_count_untied_embeddings_by_row():
    from genkit.engine import Generator

    model = Generator.from_pretrained().model
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    token_table = model.token_embedding.weight
    position_table = model.position_embedding.weight
    tables = (token_table.numel() + position_table.numel()) * 4
    rows = 3 * (token_table.shape[1] + position_table.shape[1]) * 4

    assert weight_bytes_per_step(model, batch_size=3) == all_bytes - tables + rows


def test_weight_bytes_count_tied_head_in_full(tiny_gpt2):
    from genkit.engine import Generator

    model = Generator.from_pretrained(tiny_gpt2().folder).model
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    unique = {p.data_ptr(): p for p in model.parameters()}.values()
    all_bytes = sum(p.numel() * p.element_size() for p in unique)
    position_table = model.wpe.weight

    expected = all_bytes - position_table.numel() * 4 + position_table.shape[1] * 4
    assert weight_bytes_per_step(model, batch_size=1) == expected


def test_kv_bytes_per_position_follows_dtype():
    from genkit.models.base import ModelShape

    shape = ModelShape(n_layers=12, n_heads=12, head_dim=64, vocab_size=50257, max_positions=1024)
    assert kv_bytes_per_position(shape, torch.float32) == 2 * 12 * 12 * 64 * 4
    assert kv_bytes_per_position(shape, torch.bfloat16) == 2 * 12 * 12 * 64 * 2


def test_bandwidth_measurement():
    result = measure_memory_bandwidth(16 << 20, repeats=2)

    assert result.size_bytes == 16 << 20
    assert result.bytes_per_s == pytest.approx(result.size_bytes / result.best_s)
    with pytest.raises(ConfigError, match="invalid bandwidth tensor size 12"):
        measure_memory_bandwidth(12)
    with pytest.raises(ConfigError, match="invalid bandwidth repeats 0"):
        measure_memory_bandwidth(1 << 20, repeats=0)


def test_gpu_script_imports_and_explains_missing_cuda():
    import importlib.util

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so the script would run instead of exiting")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing runs nothing

    with pytest.raises(SystemExit, match="needs a CUDA GPU.*torch.cuda.is_available\\(\\) is False"):
        module.require_cuda()
