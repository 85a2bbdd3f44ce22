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


def _snapshot_in_cache(repo_id: str, revision: str = "main") -> tuple[Path | None, Path]:
    """Find the snapshot folder of ``repo_id`` in the hub cache without any network access."""
    cache = hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None, repo_dir
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot, repo_dir
    snapshot = repo_dir / "snapshots" / revision  # a commit hash given as revision
    if snapshot.is_dir():
        return snapshot, repo_dir
    snapshots = sorted((repo_dir / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    if snapshots:
        return snapshots[-1].parent, repo_dir
    return None, repo_dir


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str = "main") -> Path:
    """Return the folder that holds the checkpoint named by a path, a shipped name or a hub id."""
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

    looked = [f"no folder at {path.resolve()}"]
    if _looks_like_hub_id(name):
        snapshot, repo_dir = _snapshot_in_cache(name, revision)
        if snapshot is not None:
            return snapshot
        looked.append(f"no snapshot in the Hugging Face cache at {repo_dir}")
    shipped = ", ".join(shipped_models()) or "none"
    raise ModelNotFoundError(
        f"model {name!r} not found ({'; '.join(looked)}; shipped models: {shipped}). "
        f"Download it on a machine with network access with `huggingface-cli download {name}` "
        "(set HF_HOME or HF_HUB_CACHE to the cache you copy it into), or pass a local checkpoint folder"
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
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read weights file {path}: {exc}; the file is corrupted or truncated, re-download or re-save it"
        ) from exc


def _load_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged pickle/zip
        raise CheckpointError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}; re-download or re-save it"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not contain a state dict")
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
    """Read the weights of a checkpoint folder: safetensors (single or sharded) first, then pytorch_model.bin."""
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
    if not model_type:
        raise CheckpointError(f"{folder / 'config.json'} has no model_type; expected e.g. 'gpt2'")
    loader = registry.lookup("models", model_type)
    device = torch.device(device) if device is not None else torch.device("cpu")
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
