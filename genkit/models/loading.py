"""Find a checkpoint folder by path or hub id, read its files, and hand it to the model loader.

Everything here works offline: a hub id is looked up only in the local Hugging
Face cache (``HF_HUB_CACHE``, or ``HF_HOME``/hub, or ~/.cache/huggingface/hub).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from genkit.devices import resolve_device
from genkit.errors import CheckpointError, GenkitError, ModelNotFoundError, PluginError
from genkit.models.base import LoadedModel

logger = logging.getLogger("genkit")

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_MODEL = "toy-shakespeare"

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"


def shipped_models() -> list[str]:
    """Return the names of the checkpoints that ship inside the genkit package."""
    if not PACKAGE_CHECKPOINTS.is_dir():
        return []
    return sorted(p.name for p in PACKAGE_CHECKPOINTS.iterdir() if (p / "config.json").is_file())


def hub_cache_dir() -> Path:
    """Return the Hugging Face hub cache folder, following the same variables as huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def _snapshot_in_cache(repo_id: str, revision: str = "main") -> tuple[Path | None, str]:
    """Find the snapshot folder of ``repo_id`` in the hub cache without any network access.

    Returns the folder, or None and the reason it was not found. ``revision`` is a
    branch or tag named by a file in ``refs/``, or a commit hash named by a snapshot
    folder. Only a repository without any ``refs/`` file, as when someone copied just
    the snapshots, falls back to its newest snapshot that has a config.json.
    Raises :class:`ModelNotFoundError` when a ref names a snapshot that is not there,
    because a fallback would then load another revision without telling anyone.
    """
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None, f"no cached repository at {repo_dir}"

    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        snapshot = repo_dir / "snapshots" / commit
        if commit and snapshot.is_dir():
            return snapshot, ""
        raise ModelNotFoundError(
            f"the Hugging Face cache ref {ref} names snapshot {commit!r}, but {snapshot} does not exist; "
            f"download the model again with {download_command(repo_id, revision)}, "
            f"or delete {ref} to use another cached snapshot"
        )

    snapshot = repo_dir / "snapshots" / revision  # a commit hash given as revision
    if snapshot.is_dir():
        return snapshot, ""

    refs = repo_dir / "refs"
    if refs.is_dir() and any(path.is_file() for path in refs.rglob("*")):
        return None, f"no ref or snapshot named {revision!r} in {repo_dir}"
    snapshots = sorted((repo_dir / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    if not snapshots:
        return None, f"no snapshot with a config.json in {repo_dir}"
    logger.info(
        "%s has no refs/ files; using its newest snapshot %s for revision %r",
        repo_dir,
        snapshots[-1].parent.name,
        revision,
    )
    return snapshots[-1].parent, ""


def download_command(repo_id: str, revision: str = "main") -> str:
    """Return the shell command that downloads ``repo_id`` into the hub cache, for error messages."""
    option = "" if revision == "main" else f" --revision {revision}"
    # huggingface_hub 0.34 added the `hf` command, and 1.0 removed `huggingface-cli`.
    return (
        f"`hf download {repo_id}{option}` "
        f"(`huggingface-cli download {repo_id}{option}` before huggingface_hub 0.34)"
    )


def _looks_like_hub_id(name: str) -> bool:
    """Return True for ``name`` or ``org/name``; more parts, or a leading / . or ~, make it a path."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith(("/", ".", "~")) and "\\" not in name


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str = "main") -> Path:
    """Return the folder that contains the checkpoint named by a path, a shipped name or a hub id."""
    name = str(name_or_path)
    if not name.strip():
        raise ModelNotFoundError("empty model name; pass a checkpoint folder, a hub id such as 'gpt2', or omit it")

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"model path {name!r} is a file; pass the folder that contains config.json")

    if name in shipped_models():
        return PACKAGE_CHECKPOINTS / name

    shipped = ", ".join(shipped_models()) or "none"
    if not _looks_like_hub_id(name):
        raise ModelNotFoundError(
            f"model folder {path.resolve()} not found; pass an existing checkpoint folder that contains "
            f"config.json, the weights and the tokenizer, or a shipped model ({shipped})"
        )

    snapshot, reason = _snapshot_in_cache(name, revision)
    if snapshot is not None:
        return snapshot
    raise ModelNotFoundError(
        f"model {name!r} not found (no folder at {path.resolve()}; {reason}; shipped models: {shipped}). "
        f"Download it on a machine with network access with {download_command(name, revision)}, "
        "and set HF_HOME or HF_HUB_CACHE to the cache you copy it into. Or pass a local checkpoint folder"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; re-save or re-download the checkpoint") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not contain a JSON object")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint folder {folder} has no config.json; save the model with save_pretrained(folder)"
        )
    return read_json(path)


def read_generation_defaults(folder: Path) -> dict[str, Any]:
    """Return the fields of ``generation_config.json``, or an empty dict when the file is absent."""
    path = Path(folder) / "generation_config.json"
    return read_json(path) if path.is_file() else {}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read weights file {path}: {exc}; the file is corrupted or truncated, re-download or re-save it"
        ) from exc
    check_finite(state, path)
    return state


def _load_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged pickle/zip
        raise CheckpointError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}; re-download or re-save it"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not contain a state dict")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"entry {name!r} in {path} is of type {type(value).__name__}, not a tensor; re-download or re-save it"
            )
    check_finite(state, path)
    return state


def _load_sharded(folder: Path, index_name: str, load_one) -> dict[str, torch.Tensor]:
    index = read_json(folder / index_name)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{folder / index_name} has no weight_map; re-save the checkpoint")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard} listed in {index_name} is missing from {folder}")
        state.update(load_one(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{len(missing)} tensors listed in {index_name} are not in the shards, e.g. {missing[0]}")
    return state


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint folder: safetensors (single or sharded) first, then pytorch_model.bin.

    Raises :class:`CheckpointError` for an unreadable file or a floating-point
    tensor that contains NaN or infinity.
    """
    folder = Path(folder)
    if (folder / SAFETENSORS_FILE).is_file():
        return _load_safetensors(folder / SAFETENSORS_FILE)
    if (folder / SAFETENSORS_INDEX).is_file():
        return _load_sharded(folder, SAFETENSORS_INDEX, _load_safetensors)
    if (folder / PYTORCH_FILE).is_file():
        return _load_pytorch_bin(folder / PYTORCH_FILE)
    if (folder / PYTORCH_INDEX).is_file():
        return _load_sharded(folder, PYTORCH_INDEX, _load_pytorch_bin)
    raise CheckpointError(
        f"no weights in {folder}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} with its shards, "
        f"or {PYTORCH_FILE}; save the model with save_pretrained(folder)"
    )


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first floating-point tensor of ``path`` with a NaN or infinity.

    A file whose data bytes were overwritten keeps a valid header, so it loads
    without error, and the model then produces garbage or fails in sampling.
    NOTE: a checkpoint that stores a non-finite buffer on purpose (say a mask
    filled with -inf) is rejected too. GPT-2 and toy checkpoints store none.
    """
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        # A NaN or infinity makes the sum NaN or infinite. The sum is one vectorised pass
        # without a temporary: 0.02 s instead of 0.3 s for isfinite().all() on the 124M
        # fp32 parameters of GPT-2 small (2-core Xeon). isfinite().all() runs only for a
        # sum that is not finite, to tell an overflow of finite values from corruption.
        if bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(
            f"tensor {name!r} in weights file {path} has {bad} NaN or infinite values (of {tensor.numel()}); "
            "the file is corrupted, re-download or re-save the checkpoint"
        )


def check_layer_count(state: dict[str, torch.Tensor], block_prefix: str, n_layer: int, folder: Path) -> None:
    """Raise :class:`CheckpointError` when config.json sets more blocks than the weights contain.

    Blocks are the keys ``<block_prefix><index>.``. Call this before building the
    model, because building 10**8 blocks, even on the meta device, takes minutes
    and gigabytes before the tensor check could report them missing. A config with
    fewer blocks than the weights builds quickly, and the tensor check then names
    the unexpected tensors.
    """
    indices = set()
    for key in state:
        if key.startswith(block_prefix):
            index = key[len(block_prefix) :].split(".", 1)[0]
            if index.isdigit():
                indices.add(int(index))
    stored = max(indices) + 1 if indices else 0
    if n_layer > stored:
        if stored:
            stored_keys = f"keys {block_prefix}0.* to {block_prefix}{stored - 1}.*"
        else:
            stored_keys = f"no {block_prefix}*.* keys"
        raise CheckpointError(
            f"config.json in {folder} sets n_layer={n_layer}, but the weights contain {stored} blocks "
            f"({stored_keys}); check that config.json and the weights come from the same checkpoint"
        )


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    registry=None,
    revision: str = "main",
) -> LoadedModel:
    """Load a checkpoint by path, shipped name or cached hub id, with the loader registered for its model_type.

    ``dtype`` None keeps the dtype stored in the checkpoint.
    """
    from genkit.registry import get_registry

    registry = registry or get_registry()
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    folder = resolve_checkpoint(name, revision)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type is None or model_type == "":
        raise CheckpointError(f"{folder / 'config.json'} has no model_type; expected e.g. 'gpt2'")
    if not isinstance(model_type, str):
        raise CheckpointError(
            f"invalid model_type={model_type!r} in {folder / 'config.json'}: expected a string such as 'gpt2'; "
            "correct the field, or re-download or re-save the checkpoint"
        )
    loader = registry.lookup("models", model_type)
    device = resolve_device(device)
    try:
        loaded = loader.spec.load(folder=folder, config=config, device=device, dtype=dtype)
    except GenkitError:
        raise
    except Exception as exc:
        raise PluginError(
            f"model loader for {model_type!r} from plugin {loader.plugin!r} failed on {folder}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    loaded.name = name
    loaded.path = folder
    logger.info("loaded %s (%s) from %s", name, model_type, folder)
    return loaded
