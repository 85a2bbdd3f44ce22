"""The plugin registry against real pluggy hooks and real entry points."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

import genkit
from genkit.errors import DuplicateNameError, PluginError, UnknownNameError
from genkit.registry import KINDS, Registry
from genkit.specs import ProcessorSpec, SamplerSpec, StoppingSpec
from genkit.testing import plugin_registered, tiny_generator, write_distribution

BUILTIN_PLUGINS = {"builtin_caches", "builtin_models", "builtin_processors", "builtin_samplers", "builtin_stopping"}


def test_builtins_load_through_entry_points():
    registry = Registry.load()
    names = {p.name for p in registry.plugins}
    assert BUILTIN_PLUGINS <= names
    assert {"greedy", "multinomial"} <= set(registry.samplers)
    assert {"concat", "static"} <= set(registry.caches)
    assert {"eos", "max_new_tokens", "stop_strings"} <= set(registry.stopping_criteria)
    assert {"gpt2", "genkit-toy"} <= set(registry.models)
    builtin = [p for p in registry.plugins if p.name in BUILTIN_PLUGINS]
    assert all(p.distribution == "genkit" and p.version == genkit.__version__ for p in builtin)


def test_hooks_not_called_during_generation():
    registry = Registry()
    calls: Counter[str] = Counter()
    registry.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.update([name]), lambda *a: None)
    registry.load_entry_points(strict=True)
    after_load = dict(calls)
    hook_names = {hook for _, hook, _, _ in KINDS}
    assert set(after_load) == hook_names

    generator = tiny_generator(registry=registry)
    result = generator.generate("to be", max_new_tokens=50, do_sample=True, top_k=5, top_p=0.9, seed=0)

    assert len(result.token_ids) == 50
    assert dict(calls) == after_load, "a pluggy hook ran while planning or decoding"


class _SamplerPlugin:
    def __init__(self, name: str):
        self.name = name

    @genkit.hookimpl
    def register_samplers(self, register):
        register(SamplerSpec(self.name, lambda ctx: None))


def test_duplicate_name_names_both_plugins():
    registry = Registry.load(entry_points=False, plugins=[("first_plugin", _SamplerPlugin("mine"))])
    with pytest.raises(DuplicateNameError) as excinfo:
        registry.add_plugin(_SamplerPlugin("mine"), name="second_plugin")
    message = str(excinfo.value)
    assert "first_plugin" in message
    assert "second_plugin" in message
    assert "'mine'" in message
    assert [p.name for p in registry.plugins] == ["first_plugin"]


def test_duplicate_of_builtin_name_is_error():
    with pytest.raises(DuplicateNameError, match="builtin_samplers"):
        Registry.load(plugins=[("mine", _SamplerPlugin("greedy"))])


class _RaisingPlugin:
    @genkit.hookimpl
    def register_logits_processors(self, register):
        raise RuntimeError("boom in hook")


def test_hook_error_names_plugin_and_leaves_registry_clean():
    registry = Registry.load(entry_points=False)
    with pytest.raises(PluginError, match="'raiser'.*register_logits_processors.*boom in hook"):
        registry.add_plugin(_RaisingPlugin(), name="raiser")
    assert not registry.pm.has_plugin("raiser")
    assert registry.plugins == []


class _WrongSpecPlugin:
    @genkit.hookimpl
    def register_samplers(self, register):
        register(StoppingSpec("oops", lambda ctx: None))


def test_wrong_spec_type_is_reported():
    with pytest.raises(PluginError, match="expected a SamplerSpec"):
        Registry.load(entry_points=False, plugins=[("wrong", _WrongSpecPlugin())])


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    """Install, on sys.path, a real distribution whose genkit entry point fails to import."""
    source = "raise ImportError('needs a package that is missing')\n"
    write_distribution(tmp_path, "broken-genkit-plugin", "0.3", "broken", "broken_genkit_plugin_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("broken_genkit_plugin_mod", None)


def test_broken_plugin_is_reported_and_skipped(broken_distribution, monkeypatch, caplog):
    monkeypatch.delenv("GENKIT_STRICT_PLUGINS", raising=False)
    registry = Registry.load()
    assert BUILTIN_PLUGINS <= {p.name for p in registry.plugins}
    assert len(registry.failures) == 1
    failure = registry.failures[0]
    assert failure.distribution == "broken-genkit-plugin"
    assert "needs a package that is missing" in failure.error
    assert "broken-genkit-plugin" in caplog.text


def test_strict_mode_raises_for_broken_plugin(broken_distribution, monkeypatch):
    monkeypatch.setenv("GENKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken-genkit-plugin.*needs a package that is missing"):
        Registry.load()


@pytest.mark.parametrize(
    ("kwargs", "kind", "available"),
    [
        ({"cache": "nope"}, "KV cache", "concat"),
        ({"sampler": "nope"}, "sampler", "greedy"),
        ({"logits_processors": ["nope"]}, "logits processor", "top_k"),
        ({"stopping_criteria": ["nope"]}, "stopping criterion", "eos"),
    ],
)
def test_unknown_component_lists_available(kwargs, kind, available):
    generator = tiny_generator()
    with pytest.raises(UnknownNameError) as excinfo:
        generator.generate("ab", max_new_tokens=2, **kwargs)
    message = str(excinfo.value)
    assert f"unknown {kind} 'nope" in message
    assert available in message


class _FailingBuildPlugin:
    @genkit.hookimpl
    def register_logits_processors(self, register):
        def build(ctx):
            raise ZeroDivisionError("bad math in build")

        register(ProcessorSpec("failing", build))


def test_build_error_names_plugin():
    with plugin_registered(_FailingBuildPlugin(), name="my_failing_plugin") as registry:
        generator = tiny_generator(registry=registry)
        with pytest.raises(PluginError, match="'failing' from plugin 'my_failing_plugin'.*bad math"):
            generator.generate("ab", max_new_tokens=2, logits_processors=["failing"])


class _BanLetterPlugin:
    """A processor plugin with an option: forbid one character."""

    @genkit.hookimpl
    def register_logits_processors(self, register):
        def build(ctx, letter="e"):
            banned = ctx.tokenizer.encode(letter)[0]

            def ban(input_ids, scores):
                scores = scores.clone()
                scores[:, banned] = -float("inf")
                return scores

            return ban

        register(ProcessorSpec("ban_letter", build))


def test_plugin_processor_with_options_runs():
    with plugin_registered(_BanLetterPlugin()) as registry:
        generator = tiny_generator(registry=registry)
        free = generator.generate("ab", max_new_tokens=40, do_sample=True, seed=3, top_k=0)
        letter = free.text[0]
        banned = generator.generate(
            "ab", max_new_tokens=40, do_sample=True, seed=3, top_k=0,
            logits_processors=[("ban_letter", {"letter": letter})],
        )
    assert letter not in banned.text
    assert len(banned.token_ids) == 40


def test_plugin_registered_restores_default_registry():
    from genkit.registry import get_registry

    before = get_registry()
    with plugin_registered(_BanLetterPlugin()) as registry:
        assert get_registry() is registry
    assert get_registry() is before


def test_unknown_processor_option_names_plugin():
    with plugin_registered(_BanLetterPlugin(), name="ban_plugin") as registry:
        generator = tiny_generator(registry=registry)
        with pytest.raises(PluginError, match="'ban_letter' from plugin 'ban_plugin' rejected options \\['colour'\\]"):
            generator.generate("ab", max_new_tokens=2, logits_processors=[("ban_letter", {"colour": "red"})])


def test_transformers_logits_processor_instance_runs_last():
    from transformers import SuppressTokensLogitsProcessor

    generator = tiny_generator()
    banned = generator.tokenizer.encode("e")[0]
    result = generator.generate(
        "ab", max_new_tokens=30, do_sample=True, seed=1, top_k=0,
        logits_processors=[SuppressTokensLogitsProcessor([banned], device="cpu")],
    )
    assert banned not in result.token_ids
    assert torch.is_tensor(torch.tensor(result.token_ids))


class _MisspelledHookPlugin:
    @genkit.hookimpl
    def register_sampler(self, register):  # missing the final "s"
        register(SamplerSpec("never", lambda ctx: None))


def test_misspelled_hook_is_error():
    with pytest.raises(PluginError, match="unknown hook 'register_sampler'.*register_samplers"):
        Registry.load(entry_points=False, plugins=[("typo", _MisspelledHookPlugin())])


@pytest.fixture
def exiting_distribution(tmp_path, monkeypatch):
    """A real distribution whose genkit entry point calls sys.exit at import."""
    source = "import sys\nsys.exit(3)\n"
    write_distribution(tmp_path, "exiting-genkit-plugin", "0.1", "exiting", "exiting_genkit_plugin_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("exiting_genkit_plugin_mod", None)


def test_plugin_calling_sys_exit_is_skipped(exiting_distribution, monkeypatch):
    monkeypatch.delenv("GENKIT_STRICT_PLUGINS", raising=False)
    registry = Registry.load()
    assert [f.distribution for f in registry.failures] == ["exiting-genkit-plugin"]
    assert "SystemExit" in registry.failures[0].error


class _NoneSamplerPlugin:
    @genkit.hookimpl
    def register_samplers(self, register):
        register(SamplerSpec("returns_none", lambda ctx: None))

    @genkit.hookimpl
    def register_kv_caches(self, register):
        from genkit.specs import CacheSpec

        register(CacheSpec("not_a_cache", lambda ctx: object()))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"sampler": "returns_none"}, "sampler 'returns_none' from plugin 'none_plugin' built None"),
        ({"cache": "not_a_cache"}, "KV cache 'not_a_cache' from plugin 'none_plugin' built"),
    ],
)
def test_bad_build_result_names_plugin(kwargs, pattern):
    with plugin_registered(_NoneSamplerPlugin(), name="none_plugin") as registry:
        generator = tiny_generator(registry=registry)
        with pytest.raises(PluginError, match=pattern):
            generator.generate("ab", max_new_tokens=2, **kwargs)
