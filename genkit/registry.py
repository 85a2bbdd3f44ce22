"""The plugin manager: the one place in genkit that talks to pluggy.

:class:`Registry` loads the plugins of the ``genkit`` entry-point group, calls each
hook once per plugin, and keeps what they registered in plain dictionaries. The
planner looks components up here by name; no hook is called after loading.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from genkit import hookspecs
from genkit.errors import DuplicateNameError, PluginError, UnknownNameError
from genkit.specs import CacheSpec, ModelSpec, ProcessorSpec, SamplerSpec, StoppingSpec

logger = logging.getLogger("genkit")

ENTRY_POINT_GROUP = "genkit"
STRICT_ENV = "GENKIT_STRICT_PLUGINS"

# Registry attribute, hook name, spec class and the spec field that names it.
KINDS: tuple[tuple[str, str, type, str], ...] = (
    ("processors", "register_logits_processors", ProcessorSpec, "name"),
    ("samplers", "register_samplers", SamplerSpec, "name"),
    ("stopping_criteria", "register_stopping_criteria", StoppingSpec, "name"),
    ("caches", "register_kv_caches", CacheSpec, "name"),
    ("models", "register_models", ModelSpec, "model_type"),
)

LABELS = {
    "processors": "logits processor",
    "samplers": "sampler",
    "stopping_criteria": "stopping criterion",
    "caches": "KV cache",
    "models": "model type",
}


@dataclass
class PluginInfo:
    """One loaded plugin and what it registered, by kind."""

    name: str
    distribution: str | None
    version: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)

@dataclass
class PluginFailure:
    """A plugin that failed to import or to register, and why."""

    entry_point: str
    distribution: str | None
    error: str

@dataclass
class Registered:
    """A spec together with the plugin that registered it."""

    spec: Any
    plugin: str

def strict_mode() -> bool:
    """Return True when ``GENKIT_STRICT_PLUGINS`` is set to make plugin failures raise."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")

class Registry:
    """Components registered by plugins, by kind and name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self.processors: dict[str, Registered] = {}
        self.samplers: dict[str, Registered] = {}
        self.stopping_criteria: dict[str, Registered] = {}
        self.caches: dict[str, Registered] = {}
        self.models: dict[str, Registered] = {}

    @classmethod
    def load(
        cls,
        entry_points: bool = True,
        plugins: Iterable[tuple[str, Any]] = (),
        strict: bool | None = None,
    ) -> Registry:
        """Build a registry from installed entry points and from ``(name, plugin)`` pairs.

        A plugin that fails to import or raises in a hook is logged and skipped,
        unless ``strict`` (default: the ``GENKIT_STRICT_PLUGINS`` variable) is set,
        in which case :class:`PluginError` is raised. Two plugins registering one
        name always raise :class:`PluginError`.
        """
        registry = cls()
        if entry_points:
            registry.load_entry_points(strict)
        for name, plugin in plugins:
            registry.add_plugin(plugin, name=name)
        return registry

    def load_entry_points(self, strict: bool | None = None) -> None:
        """Load every plugin of the ``genkit`` entry-point group, in name order."""
        strict = strict_mode() if strict is None else strict
        for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            self._load_entry_point(entry_point, strict)

    def _load_entry_point(self, entry_point: importlib.metadata.EntryPoint, strict: bool) -> None:
        dist = entry_point.dist
        dist_name = dist.name if dist is not None else None
        version = dist.version if dist is not None else None
        try:
            plugin = entry_point.load()
        except (Exception, SystemExit) as exc:  # any import-time failure of third-party code, sys.exit included
            self._fail(f"{entry_point.name} = {entry_point.value}", dist_name, exc, strict)
            return
        try:
            self.add_plugin(plugin, name=entry_point.name, distribution=dist_name, version=version)
        except DuplicateNameError:
            raise  # a name clash is an error even outside strict mode
        except PluginError as exc:
            self._fail(f"{entry_point.name} = {entry_point.value}", dist_name, exc, strict)

    def _fail(self, entry_point: str, distribution: str | None, exc: BaseException, strict: bool) -> None:
        error = f"{type(exc).__name__}: {exc}"
        where = f"plugin {entry_point!r} from distribution {distribution or 'unknown'}"
        if strict:
            raise PluginError(f"{where} failed to load: {error} (unset {STRICT_ENV} to skip broken plugins)") from exc
        logger.warning("skipping %s: %s (set %s=1 to make this an error)", where, error, STRICT_ENV)
        self.failures.append(PluginFailure(entry_point, distribution, error))

    def add_plugin(
        self,
        plugin: Any,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register one plugin object and collect what its hooks register.

        Raises :class:`PluginError` when a hook raises or a name is taken; the
        registry is then left as it was before the call.
        """
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already loaded; give the second one another name")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} has an invalid hook implementation: {exc}") from exc
        info = PluginInfo(name=name, distribution=distribution, version=version)
        try:
            self._check_hook_names(plugin, name)
            for attribute, hook_name, spec_class, key in KINDS:
                names = self._collect(plugin, name, hook_name, spec_class, key, getattr(self, attribute))
                if names:
                    info.registered[attribute] = names
        except Exception:
            self._forget(name)
            raise
        self.plugins.append(info)
        return info

    def _check_hook_names(self, plugin: Any, plugin_name: str) -> None:
        """Reject a ``@hookimpl`` function whose name matches no genkit hook (a typo would register nothing)."""
        for impl in self.pm.get_hookcallers(plugin) or []:
            if not impl.has_spec():
                known = ", ".join(hook for _, hook, _, _ in KINDS)
                raise PluginError(
                    f"plugin {plugin_name!r} implements unknown hook {impl.name!r}; genkit's hooks are: {known}"
                )

    def _collect(
        self, plugin: Any, plugin_name: str, hook_name: str, spec_class: type, key: str, table: dict[str, Registered]
    ) -> list[str]:
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        collected: list[Any] = []

        def register(spec: Any) -> None:
            if not isinstance(spec, spec_class):
                raise PluginError(
                    f"plugin {plugin_name!r} passed {spec!r} to {hook_name}; expected a {spec_class.__name__}"
                )
            collected.append(spec)

        try:
            caller(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin_name!r} raised in {hook_name}: {type(exc).__name__}: {exc}") from exc

        names: list[str] = []
        for spec in collected:
            spec_name = getattr(spec, key)
            if spec_name in names:
                raise DuplicateNameError(
                    f"plugin {plugin_name!r} registers {spec_class.__name__} name {spec_name!r} twice"
                )
            if spec_name in table:
                owner = table[spec_name].plugin
                raise DuplicateNameError(
                    f"{spec_class.__name__} name {spec_name!r} is registered by both plugin {owner!r} "
                    f"and plugin {plugin_name!r}; uninstall one or rename its component"
                )
            names.append(spec_name)
        for spec in collected:
            table[getattr(spec, key)] = Registered(spec, plugin_name)
        return names

    def _forget(self, plugin_name: str) -> None:
        """Drop a half-registered plugin so a failure leaves the registry as it was."""
        self.pm.unregister(name=plugin_name)
        for attribute, *_ in KINDS:
            table = getattr(self, attribute)
            for key in [k for k, v in table.items() if v.plugin == plugin_name]:
                del table[key]

    def lookup(self, kind: str, name: str) -> Registered:
        """Return the registered component ``name`` of ``kind`` or raise a listing error."""
        table: dict[str, Registered] = getattr(self, kind)
        if name not in table:
            label = LABELS.get(kind, kind)
            available = ", ".join(sorted(table)) or "none (are the genkit built-in plugins installed?)"
            raise UnknownNameError(f"unknown {label} {name!r}; available: {available}")
        return table[name]

_default: Registry | None = None

def get_registry() -> Registry:
    """Return the process-wide registry, loading the installed plugins on first use."""
    global _default
    if _default is None:
        _default = Registry.load()
    return _default

def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (None reloads on next use); return the previous one."""
    global _default
    previous, _default = _default, registry
    return previous
