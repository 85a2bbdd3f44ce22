"""The gumbel sampler inside genkit: through Generator, and as an installed distribution."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys

import pytest

from genkit.errors import ConfigError
from genkit.registry import Registry
from genkit.testing import plugin_registered, tiny_generator

genkit_gumbel_sampler = pytest.importorskip(
    "genkit_gumbel_sampler", reason="not installed; run `pip install -e examples/genkit-gumbel-sampler`"
)

DISTRIBUTION = "genkit-gumbel-sampler"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


requires_install = pytest.mark.skipif(
    installed_version() is None,
    reason=f"{DISTRIBUTION} is not installed; run `pip install -e examples/genkit-gumbel-sampler` to test its entry point",
)


@pytest.fixture(scope="module")
def generator():
    with plugin_registered(genkit_gumbel_sampler, name="gumbel") as registry:
        yield tiny_generator(seed=0, registry=registry)


def test_generates_requested_tokens(generator):
    result = generator.generate("ROMEO:", sampler="gumbel", do_sample=True, seed=0, max_new_tokens=20)
    assert len(result.token_ids) == 20
    assert result.finish_reason == "length"
    assert result.text == generator.tokenizer.decode(result.token_ids)


def test_seeded_generation_repeats(generator):
    first = generator.generate("ROMEO:", sampler="gumbel", do_sample=True, top_k=0, seed=11, max_new_tokens=30)
    second = generator.generate("ROMEO:", sampler="gumbel", do_sample=True, top_k=0, seed=11, max_new_tokens=30)
    other = generator.generate("ROMEO:", sampler="gumbel", do_sample=True, top_k=0, seed=12, max_new_tokens=30)
    assert first.token_ids == second.token_ids
    assert first.token_ids != other.token_ids


def test_top_k_one_matches_greedy(generator):
    # top_k runs before the sampler, so with one token left every sampler must pick it.
    greedy = generator.generate("ROMEO:", do_sample=False, max_new_tokens=25)
    gumbel = generator.generate("ROMEO:", sampler="gumbel", do_sample=True, top_k=1, seed=5, max_new_tokens=25)
    assert gumbel.token_ids == greedy.token_ids


def test_batch_with_left_padding(generator):
    results = generator.generate_batch(
        ["ROMEO:", "To be, or not"], sampler="gumbel", do_sample=True, seed=2, max_new_tokens=15
    )
    assert [len(r.token_ids) for r in results] == [15, 15]


def test_stream_matches_generate(generator):
    kwargs = dict(sampler="gumbel", do_sample=True, seed=4, max_new_tokens=12)
    stream = generator.stream("ROMEO:", **kwargs)
    streamed = [event.token_id for event in stream]
    assert streamed == generator.generate("ROMEO:", **kwargs).token_ids


def test_tau_option_reaches_sampler(generator):
    state = generator.prefill(["ROMEO:"], sampler="gumbel", do_sample=True, sampler_options={"tau": 0.5}, seed=0)
    assert state.plan.sampler.tau == 0.5


def test_bad_tau_raises_config_error(generator):
    with pytest.raises(ConfigError, match="tau=0"):
        generator.generate("ROMEO:", sampler="gumbel", do_sample=True, sampler_options={"tau": 0}, max_new_tokens=2)


def test_greedy_config_logs_warning(generator, caplog):
    with caplog.at_level(logging.WARNING, logger="genkit_gumbel_sampler"):
        generator.generate("ROMEO:", sampler="gumbel", seed=0, max_new_tokens=2)
    assert "do_sample=False" in caplog.text


@requires_install
def test_entry_point_lists_plugin_with_version():
    registry = Registry.load(strict=True)
    plugin = next((p for p in registry.plugins if p.distribution == DISTRIBUTION), None)
    assert plugin is not None, f"{DISTRIBUTION} is installed but no plugin of it was loaded"
    assert plugin.name == "gumbel"
    assert plugin.version == installed_version()
    assert plugin.registered == {"samplers": ["gumbel"]}


@requires_install
def test_cli_plugins_json_lists_plugin():
    completed = subprocess.run(
        [sys.executable, "-m", "genkit.cli", "plugins", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(completed.stdout)
    listed = {p["name"]: p for p in payload["plugins"]}
    assert listed["gumbel"]["distribution"] == DISTRIBUTION
    assert listed["gumbel"]["version"] == installed_version()
    assert listed["gumbel"]["registered"] == {"samplers": ["gumbel"]}
