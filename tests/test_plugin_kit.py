"""The plugin author's kit: hook documentation and tests, docs/plugins.md, genkit.testing, the example plugin."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pluggy
import pytest
import torch

import genkit
from genkit import hookspecs
from genkit.caches.concat import ConcatKVCache
from genkit.errors import ConfigError, DuplicateNameError
from genkit.models.base import LoadedModel
from genkit.models.tokenizer import CharTokenizer
from genkit.models.toy import ToyConfig, ToyGPT
from genkit.registry import KINDS, Registry, get_registry, set_registry
from genkit.specs import CacheSpec, ModelSpec, ProcessorSpec, SamplerSpec, StoppingSpec
from genkit.testing import (
    plugin_registered,
    request_context,
    run_processor,
    run_sampler,
    tiny_generator,
    write_distribution,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_GUIDE = REPO_ROOT / "docs" / "plugins.md"
EXAMPLE_DISTRIBUTION = "genkit-gumbel-sampler"
EXAMPLE_PACKAGE = "genkit_gumbel_sampler"


def hook_names() -> list[str]:
    """Return the names of the hooks declared in genkit.hookspecs."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    return sorted(name for name in dir(hookspecs) if manager.parse_hookspec_opts(hookspecs, name) is not None)


def read_test_modules() -> dict[Path, str]:
    """Return the text of every test module in tests/ and examples/*/tests/."""
    paths = [*REPO_ROOT.glob("tests/**/*.py"), *REPO_ROOT.glob("examples/*/tests/**/*.py")]
    return {path: path.read_text(encoding="utf-8") for path in paths}


# ---------------------------------------------------------------- every hook documented and tested


def test_hookspecs_found():
    assert len(hook_names()) >= 5


def test_registry_calls_every_hook():
    assert {hook for _, hook, _, _ in KINDS} == set(hook_names())


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_docstring(hook):
    assert inspect.getdoc(getattr(hookspecs, hook)), f"genkit.hookspecs.{hook} has an empty docstring"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_in_plugin_guide(hook):
    assert hook in PLUGIN_GUIDE.read_text(encoding="utf-8"), f"{hook} is not mentioned in docs/plugins.md"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_implemented_in_some_test(hook):
    implementation = re.compile(rf"\bdef\s+{hook}\s*\(")
    users = [path for path, text in read_test_modules().items() if implementation.search(text)]
    assert users, f"no test module under tests/ or examples/*/tests/ implements the hook {hook}"


def test_builtin_specs_have_descriptions():
    registry = Registry.load(strict=True)
    builtin = {p.name for p in registry.plugins if p.distribution == "genkit"}
    missing = []
    for attribute, _, _, _ in KINDS:
        for name, registered in getattr(registry, attribute).items():
            if registered.plugin in builtin and not registered.spec.description.strip():
                missing.append(f"{attribute}:{name}")
    assert builtin, "no built-in plugin was loaded; is genkit installed (pip install -e .)?"
    assert not missing, f"built-in specs without a description: {missing}"


# ---------------------------------------------------------------- docs/plugins.md


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Return (first line number, code) of every ```python block of a Markdown text."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """Return the rows of the first Markdown table after ``heading``, keyed by the name in the first cell."""
    section = text[text.index(heading):]
    rows: dict[str, list[str]] = {}
    started = False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            name = re.fullmatch(r"`([\w-]+)`", cells[0])
            if name:
                rows[name.group(1)] = cells[1:]
        elif started:
            break
    return rows


def test_guide_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = PLUGIN_GUIDE.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert len(blocks) >= 10
    namespace: dict = {"__name__": "plugins_md"}
    previous = get_registry()
    try:
        for line, code in blocks:
            # Pad with newlines so that a traceback gives the line number in docs/plugins.md.
            exec(compile("\n" * (line - 1) + code, str(PLUGIN_GUIDE), "exec"), namespace)
    finally:
        set_registry(previous)


def test_guide_processor_order_matches_registry():
    rows = table_rows(PLUGIN_GUIDE.read_text(encoding="utf-8"), "The built-in order")
    registry = Registry.load(strict=True)
    builtin = {
        name: registered.spec
        for name, registered in registry.processors.items()
        if registered.plugin.startswith("builtin_")
    }
    assert set(rows) == set(builtin), "docs/plugins.md lists other built-in processors than the registry"
    for name, spec in builtin.items():
        order, sampling_only = rows[name][0], rows[name][1]
        assert float(order) == spec.order, f"{name}: docs say order {order}, the registry {spec.order}"
        assert sampling_only == ("yes" if spec.sampling_only else "no"), f"{name}: sampling_only differs"
    documented = [name for name in rows]
    assert documented == sorted(documented, key=lambda name: builtin[name].order), "table not in chain order"


def test_guide_stopping_order_matches_registry():
    rows = table_rows(PLUGIN_GUIDE.read_text(encoding="utf-8"), "The built-in criteria")
    registry = Registry.load(strict=True)
    builtin = {
        name: registered.spec
        for name, registered in registry.stopping_criteria.items()
        if registered.plugin.startswith("builtin_")
    }
    assert set(rows) == set(builtin)
    for name, spec in builtin.items():
        assert float(rows[name][0]) == spec.order, f"{name}: docs say order {rows[name][0]}, the registry {spec.order}"


# ---------------------------------------------------------------- genkit.testing


class _Sampler:
    """Registers a sampler whose build function returns the same object every time, for inspection."""

    def __init__(self, name="kit_sampler"):
        self.name = name
        self.sampler = _FirstTokenSampler()

    @genkit.hookimpl
    def register_samplers(self, register):
        register(SamplerSpec(self.name, lambda ctx: self.sampler, description="always token 0"))


class _FirstTokenSampler:
    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1

    def __call__(self, input_ids, scores, generator):
        return torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)


def test_plugin_registered_sets_and_restores_default():
    before = get_registry()
    with plugin_registered(_Sampler()) as registry:
        assert get_registry() is registry
        assert registry.lookup("samplers", "kit_sampler").plugin == "test_plugin"
    assert get_registry() is before


def test_plugin_registered_restores_after_error():
    before = get_registry()
    with pytest.raises(RuntimeError, match="inside the block"):
        with plugin_registered(_Sampler()):
            raise RuntimeError("inside the block")
    assert get_registry() is before


def test_plugin_registered_without_builtins():
    with plugin_registered(_Sampler(), name="alone", builtins=False) as registry:
        assert [p.name for p in registry.plugins] == ["alone"]
        assert list(registry.samplers) == ["kit_sampler"]


def test_plugin_registered_propagates_duplicate():
    before = get_registry()
    with pytest.raises(DuplicateNameError, match="builtin_samplers"):
        with plugin_registered(_Sampler("greedy")):
            pass
    assert get_registry() is before


@pytest.fixture
def installed_module_plugin(tmp_path, monkeypatch):
    """Install, on sys.path, a distribution whose genkit entry point is a module with a sampler hook."""
    source = (
        "import genkit\n"
        "from genkit.specs import SamplerSpec\n\n"
        "@genkit.hookimpl\n"
        "def register_samplers(register):\n"
        "    register(SamplerSpec('kit_module_sampler', lambda ctx: None, description='test'))\n"
    )
    write_distribution(tmp_path, "kit-module-plugin", "1.2", "kit_module", "kit_module_plugin_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kit_module_plugin_mod")
    yield module
    sys.modules.pop("kit_module_plugin_mod", None)


def test_plugin_registered_keeps_installed_module_once(installed_module_plugin):
    with plugin_registered(installed_module_plugin, name="under_test") as registry:
        owners = [p for p in registry.plugins if "samplers" in p.registered and "kit_module_sampler" in p.registered["samplers"]]
    assert [(p.name, p.distribution, p.version) for p in owners] == [("kit_module", "kit-module-plugin", "1.2")]


def test_request_context_fields():
    ctx = request_context(vocab_size=12, batch_size=3, prompt_length=4, eos_token_ids=(7,), top_k=5, max_new_tokens=6)
    assert ctx.shape.vocab_size == 12
    assert ctx.tokenizer.vocab_size == 12
    assert (ctx.batch_size, ctx.prompt_length, ctx.max_length) == (3, 4, 10)
    assert (ctx.eos_token_ids, ctx.pad_token_id) == ((7,), 7)
    assert ctx.config.top_k == 5
    assert ctx.device == torch.device("cpu")
    assert ctx.dtype == torch.float32


def test_request_context_validates_config():
    with pytest.raises(ConfigError, match="top_p"):
        request_context(top_p=1.5)


def test_run_processor_by_name_uses_config():
    scores = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    processed = run_processor("top_k", scores, top_k=2)
    assert processed.tolist() == [[-float("inf"), 5.0, -float("inf"), 4.0]]
    assert scores.tolist() == [[1.0, 5.0, 3.0, 4.0]]


def test_run_processor_by_name_off_raises():
    with pytest.raises(ValueError, match="'top_k' is off"):
        run_processor("top_k", torch.zeros(1, 4), top_k=0)


class _ScaleProcessor:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, input_ids, scores):
        scores *= self.factor  # in place, on purpose: run_processor must pass a copy
        return scores


class _ScalePlugin:
    @genkit.hookimpl
    def register_logits_processors(self, register):
        register(ProcessorSpec("scale", lambda ctx, factor=2.0: _ScaleProcessor(factor), description="scale"))


def test_run_processor_by_name_with_processor_options():
    scores = torch.tensor([[1.0, -2.0]])
    with plugin_registered(_ScalePlugin(), builtins=False) as registry:
        processed = run_processor("scale", scores, registry=registry, processor_options={"factor": 3.0})
    assert processed.tolist() == [[3.0, -6.0]]
    assert scores.tolist() == [[1.0, -2.0]]


def test_run_processor_by_object_copies_scores():
    scores = torch.tensor([[1.0, -2.0]])
    processed = run_processor(_ScaleProcessor(10.0), scores)
    assert processed.tolist() == [[10.0, -20.0]]
    assert scores.tolist() == [[1.0, -2.0]]


def test_run_processor_object_rejects_options():
    with pytest.raises(TypeError, match="processor object"):
        run_processor(_ScaleProcessor(1.0), torch.zeros(1, 2), top_k=3)


def test_run_processor_passes_input_ids():
    from transformers import RepetitionPenaltyLogitsProcessor

    scores = torch.tensor([[2.0, 2.0, 2.0]])
    input_ids = torch.tensor([[1]])
    processed = run_processor(RepetitionPenaltyLogitsProcessor(2.0), scores, input_ids=input_ids)
    assert processed.tolist() == [[2.0, 1.0, 2.0]]


def test_run_sampler_by_name_seeded():
    scores = torch.randn(64, 9, generator=torch.Generator().manual_seed(0))
    first = run_sampler("multinomial", scores, seed=5)
    second = run_sampler("multinomial", scores, seed=5)
    assert first.shape == (64,)
    assert torch.equal(first, second)
    assert torch.equal(run_sampler("greedy", scores), scores.argmax(dim=-1))


def test_run_sampler_by_name_resets():
    plugin = _Sampler()
    with plugin_registered(plugin, builtins=False) as registry:
        tokens = run_sampler("kit_sampler", torch.zeros(2, 3), registry=registry)
    assert tokens.tolist() == [0, 0]
    assert plugin.sampler.resets == 1


def test_run_sampler_by_object():
    sampler = _FirstTokenSampler()
    assert run_sampler(sampler, torch.zeros(3, 4), seed=1).tolist() == [0, 0, 0]
    assert sampler.resets == 0


def test_run_sampler_object_rejects_options():
    with pytest.raises(TypeError, match="sampler object"):
        run_sampler(_FirstTokenSampler(), torch.zeros(1, 2), sampler_options={"tau": 1.0})


def test_run_sampler_passes_sampler_options():
    captured = {}

    class OptionsPlugin:
        @genkit.hookimpl
        def register_samplers(self, register):
            def build(ctx, **options):
                captured.update(options)
                return _FirstTokenSampler()

            register(SamplerSpec("options_sampler", build, description="records its options"))

    with plugin_registered(OptionsPlugin(), builtins=False) as registry:
        run_sampler("options_sampler", torch.zeros(1, 2), registry=registry, sampler_options={"tau": 0.5})
    assert captured == {"tau": 0.5}


def test_tiny_generator_same_seed_same_weights():
    first = tiny_generator(seed=4).generate("to be", max_new_tokens=12)
    second = tiny_generator(seed=4).generate("to be", max_new_tokens=12)
    other = tiny_generator(seed=5).generate("to be", max_new_tokens=12)
    assert first.token_ids == second.token_ids
    assert first.token_ids != other.token_ids


def test_tiny_generator_eos_token():
    generator = tiny_generator(eos_token="e")
    forced = generator.tokenizer.encode("e")
    result = generator.generate("to be", max_new_tokens=10, logits_processors=[_Force(forced[0])])
    assert result.finish_reason == "eos"
    assert result.token_ids == forced


class _Force:
    """Force one token id at every step."""

    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token_id] = 0.0
        return forced


# ---------------------------------------------------------------- each hook, through a real plugin


class _RecordingProcessor:
    def __init__(self, calls):
        self.calls = calls

    def __call__(self, input_ids, scores):
        self.calls.append(tuple(input_ids.shape))
        return scores


class _ProcessorPlugin:
    """An auto, sampling-only processor placed between temperature (500) and top_k (510)."""

    def __init__(self):
        self.calls = []

    @genkit.hookimpl
    def register_logits_processors(self, register):
        register(ProcessorSpec("recorder", lambda ctx: _RecordingProcessor(self.calls), order=505, auto=True,
                               sampling_only=True, description="records input_ids shapes"))


def test_auto_sampling_only_processor_order():
    plugin = _ProcessorPlugin()
    with plugin_registered(plugin) as registry:
        generator = tiny_generator(registry=registry)
        state = generator.prefill("to be", do_sample=True, temperature=0.7, top_k=5, seed=0)
        names = [type(p).__name__ for p in state.plan.processors]
        greedy = generator.prefill("to be", do_sample=False)
    assert names.index("TemperatureLogitsProcessor") < names.index("_RecordingProcessor") < names.index("TopKLogitsProcessor")
    assert plugin.calls == [(1, 5)]
    assert "_RecordingProcessor" not in [type(p).__name__ for p in greedy.plan.processors]


class _MarkerCriterion:
    reason = "marker"

    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token_id


class _StoppingPlugin:
    @genkit.hookimpl
    def register_stopping_criteria(self, register):
        def build(ctx, char="x"):
            return _MarkerCriterion(ctx.tokenizer.encode(char)[0])

        register(StoppingSpec("marker", build, order=50, description="stop at one character"))


def test_stopping_plugin_reason_and_order():
    with plugin_registered(_StoppingPlugin()) as registry:
        generator = tiny_generator(registry=registry, eos_token="e")
        eos = generator.tokenizer.encode("e")[0]
        # The forced token is both EOS and the marker, and order 50 is below eos's 100, so "marker" wins.
        both = generator.generate("to be", max_new_tokens=5, stopping_criteria=[("marker", {"char": "e"})],
                                  logits_processors=[_Force(eos)])
        eos_only = generator.generate("to be", max_new_tokens=5, logits_processors=[_Force(eos)])
    assert (both.token_ids, both.finish_reason) == ([eos], "marker")
    assert eos_only.finish_reason == "eos"


def test_stopping_plugin_not_auto_unless_named():
    with plugin_registered(_StoppingPlugin()) as registry:
        generator = tiny_generator(registry=registry)
        x = generator.tokenizer.encode("x")[0]
        result = generator.generate("to be", max_new_tokens=3, logits_processors=[_Force(x)])
    assert (len(result.token_ids), result.finish_reason) == (3, "length")


class _CountingCache(ConcatKVCache):
    def __init__(self, n_layers, label):
        super().__init__(n_layers)
        self.label = label
        self.updates = 0

    def update(self, layer, key, value):
        self.updates += 1
        return super().update(layer, key, value)


class _CachePlugin:
    @genkit.hookimpl
    def register_kv_caches(self, register):
        register(CacheSpec("counting", lambda ctx, label="none": _CountingCache(ctx.shape.n_layers, label),
                           description="concat, counting update() calls"))


def test_cache_plugin_keeps_greedy_output():
    with plugin_registered(_CachePlugin()) as registry:
        generator = tiny_generator(registry=registry)
        reference = generator.generate("or not to be", max_new_tokens=15)
        state = generator.prefill("or not to be", cache="counting", cache_options={"label": "mine"}, max_new_tokens=15)
        while not state.done:
            generator.decode_step(state)
    cache = state.plan.cache
    assert cache.label == "mine"
    assert cache.updates == generator.loaded.shape.n_layers * 15
    assert state.input_ids[0, state.plan.context.prompt_length:].tolist() == reference.token_ids


def _load_random_toy(folder, config, device, dtype):
    tokenizer = CharTokenizer(list(config["alphabet"]))
    model = ToyGPT(ToyConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16))
    return LoadedModel(name="ignored", model_type="kit-random-toy", model=model.to(device).eval(), tokenizer=tokenizer)


class _ModelPlugin:
    def __init__(self, model_type="kit-random-toy"):
        self.model_type = model_type

    @genkit.hookimpl
    def register_models(self, register):
        register(ModelSpec(self.model_type, _load_random_toy, description="an untrained toy GPT"))


def test_model_plugin_loads_by_model_type(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "kit-random-toy", "alphabet": "ab c"}))
    with plugin_registered(_ModelPlugin()) as registry:
        generator = genkit.Generator.from_pretrained(folder, registry=registry)
        result = generator.generate("ab", max_new_tokens=4)
    assert generator.loaded.model_type == "kit-random-toy"
    assert generator.loaded.path == folder
    assert generator.loaded.name == str(folder)
    assert len(result.token_ids) == 4


def test_model_plugin_duplicate_of_builtin():
    with pytest.raises(DuplicateNameError, match="'genkit-toy'.*builtin_models"):
        with plugin_registered(_ModelPlugin("genkit-toy")):
            pass


@pytest.fixture
def bad_signature_distribution(tmp_path, monkeypatch):
    """Install, on sys.path, a distribution whose hook takes an argument the hookspec lacks."""
    source = "import genkit\n\n@genkit.hookimpl\ndef register_samplers(register, registry):\n    pass\n"
    write_distribution(tmp_path, "kit-bad-signature", "0.1", "kit_bad_signature", "kit_bad_signature_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("kit_bad_signature_mod", None)


def test_bad_hook_signature_skipped(bad_signature_distribution, monkeypatch):
    monkeypatch.delenv("GENKIT_STRICT_PLUGINS", raising=False)
    registry = Registry.load()
    assert [f.distribution for f in registry.failures] == ["kit-bad-signature"]


# ---------------------------------------------------------------- the example plugin package


def example_version() -> str | None:
    if importlib.util.find_spec(EXAMPLE_PACKAGE) is None:
        return None
    try:
        return importlib.metadata.version(EXAMPLE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(
    example_version() is None,
    reason=f"{EXAMPLE_PACKAGE} is not installed; run `pip install -e examples/genkit-gumbel-sampler` (CI does)",
)
def test_example_plugin_listed_with_version():
    registry = Registry.load(strict=True)
    listed = {p.distribution: p for p in registry.plugins}
    assert EXAMPLE_DISTRIBUTION in listed
    plugin = listed[EXAMPLE_DISTRIBUTION]
    assert plugin.version == example_version()
    assert plugin.registered == {"samplers": ["gumbel"]}
    assert registry.lookup("samplers", "gumbel").spec.description
