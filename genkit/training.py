"""Train the toy GPT on a text file, character by character, and save a checkpoint.

:func:`train_toy` is the whole recipe: build a character tokenizer from the
corpus, hold out its end for validation, train with AdamW on random windows, and
save a checkpoint that ``load_model`` and ``genkit generate`` read. The
``genkit train-toy`` command calls it through :func:`run_train_toy`.

The shipped ``toy-shakespeare`` checkpoint was trained with the defaults below on
``genkit/data/shakespeare_sonnets.txt``: eighteen of Shakespeare's sonnets (1609,
public domain).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm import tqdm

from genkit.config import GenerationConfig
from genkit.errors import ConfigError, CorpusNotFoundError
from genkit.models.loading import SAFETENSORS_FILE
from genkit.models.tokenizer import CHAR_TOKENIZER_FILE, CharTokenizer
from genkit.models.toy import MODEL_TYPE, ToyConfig, ToyGPT, save_toy

logger = logging.getLogger("genkit")

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "shakespeare_sonnets.txt"

# The settings of the shipped toy-shakespeare checkpoint. In trials on the 11 KB
# sonnet corpus on a 2-core CPU, 2 layers of width 128 reproduced more corpus words
# per second of training than 3 or 4 layers did.
DEFAULT_STEPS = 1800
DEFAULT_SEED = 1337
DEFAULT_N_LAYER = 2
DEFAULT_N_HEAD = 4
DEFAULT_N_EMBD = 128
DEFAULT_BLOCK_SIZE = 128
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 3e-3

# Room left in the context window for the prompt when sizing max_new_tokens.
PROMPT_ROOM = 16


def default_generation_defaults(block_size: int) -> dict[str, Any]:
    """Return the generation_config.json contents that make `genkit generate` print verse-like text without flags.

    The defaults sample, because greedy decoding of a small character model
    repeats one line. max_new_tokens fills the context window after a prompt of
    up to PROMPT_ROOM characters, because the engine stops at the window's end.
    """
    return {
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 20,
        "max_new_tokens": max(1, min(200, block_size - PROMPT_ROOM)),
    }


# The files save_toy writes; an out_dir that contains only these may be overwritten.
CHECKPOINT_FILES = frozenset({SAFETENSORS_FILE, "config.json", CHAR_TOKENIZER_FILE, "generation_config.json"})


@dataclass
class TrainSummary:
    """The outcome of one :func:`train_toy` run. Losses are mean cross-entropy in nats per character.

    ``model`` (in eval mode) and ``tokenizer`` are the trained objects that were saved to ``out_dir``.
    """

    out_dir: Path
    model: ToyGPT = field(repr=False)
    tokenizer: CharTokenizer = field(repr=False)
    steps: int
    seed: int
    parameters: int
    vocab_size: int
    corpus_chars: int
    train_loss: float
    val_loss: float
    seconds: float


def train_toy(
    corpus_path: str | os.PathLike,
    steps: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    n_layer: int = DEFAULT_N_LAYER,
    n_head: int = DEFAULT_N_HEAD,
    n_embd: int = DEFAULT_N_EMBD,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    dropout: float = 0.0,
    bias: bool = True,
    weight_decay: float = 0.1,
    val_fraction: float = 0.1,
    eval_batches: int = 8,
    device: str | torch.device = "cpu",
    generation_defaults: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train a toy GPT on the text in ``corpus_path`` and save the checkpoint to ``out_dir``.

    The same arguments on the same machine and torch thread count give identical
    weights, because ``seed`` drives the initialisation, dropout and the choice of
    training windows. Another thread count changes float summation order, so the
    weights then differ slightly. The caller's global RNG state is restored afterwards. ``block_size`` becomes the
    model's ``n_positions``. ``out_dir`` must be absent, empty, or an earlier toy
    checkpoint, which is replaced. The checkpoint is written to a temporary folder
    beside ``out_dir`` and renamed into place at the end, so a failed or
    interrupted run leaves ``out_dir`` as it was. A run whose loss becomes NaN or
    infinite raises :class:`ConfigError` and writes nothing. ``generation_defaults``
    None writes :func:`default_generation_defaults` for ``block_size``.
    """
    _check_training_arguments(steps, seed, block_size, batch_size, lr, weight_decay, val_fraction, eval_batches)
    if generation_defaults is None:
        generation_defaults = default_generation_defaults(block_size)
    GenerationConfig.build(model_defaults=generation_defaults)  # raises ConfigError naming a bad field
    device = _training_device(device)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)

    # Split before building the config, so an empty corpus is reported as too short
    # rather than as vocab_size=0.
    text = read_corpus(corpus_path)
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,)
    train_data, val_data = split_corpus(data, block_size, val_fraction, corpus_path)
    model_config = ToyConfig(
        vocab_size=tokenizer.vocab_size,
        n_positions=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=dropout,
        bias=bias,
    )

    started = time.perf_counter()
    # fork_rng restores the global RNG on exit, so training does not disturb the caller's random state.
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = ToyGPT(model_config).to(device)
        batch_generator = torch.Generator().manual_seed(seed)
        train_loop(model, train_data, steps, batch_size, lr, weight_decay, batch_generator, progress)

        eval_generator = torch.Generator().manual_seed(seed + 1)
        train_loss = estimate_loss(model, train_data, batch_size, eval_batches, eval_generator)
        val_loss = estimate_loss(model, val_data, batch_size, eval_batches, eval_generator)
    seconds = time.perf_counter() - started

    # The last optimizer step can turn the weights non-finite after a finite training loss.
    check_loss_finite(train_loss, "on the training data after the last step", lr)
    check_loss_finite(val_loss, "on the validation data after the last step", lr)

    write_checkpoint_atomically(model, tokenizer, out_dir, generation_defaults)

    summary = TrainSummary(
        out_dir=out_dir,
        model=model,
        tokenizer=tokenizer,
        steps=steps,
        seed=seed,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=tokenizer.vocab_size,
        corpus_chars=len(text),
        train_loss=train_loss,
        val_loss=val_loss,
        seconds=seconds,
    )
    logger.info(
        "trained toy GPT (%d parameters, %d steps, %.1f s): train loss %.3f, val loss %.3f; saved to %s",
        summary.parameters, steps, seconds, train_loss, val_loss, out_dir,
    )
    return summary


def _check_training_arguments(
    steps: Any,
    seed: Any,
    block_size: Any,
    batch_size: Any,
    lr: Any,
    weight_decay: Any,
    val_fraction: Any,
    eval_batches: Any,
) -> None:
    _require_int("steps", steps, 1)
    _require_int("seed", seed, 0)
    _require_int("block_size", block_size, 1)
    _require_int("batch_size", batch_size, 1)
    _require_int("eval_batches", eval_batches, 1)
    if not _is_finite_number(lr) or lr <= 0:
        raise ConfigError(f"invalid lr={lr!r}: expected a number > 0, e.g. {DEFAULT_LR}")
    if not _is_finite_number(weight_decay) or weight_decay < 0:
        raise ConfigError(f"invalid weight_decay={weight_decay!r}: expected a number >= 0")
    if not _is_finite_number(val_fraction) or not 0 < val_fraction < 1:
        raise ConfigError(f"invalid val_fraction={val_fraction!r}: expected a number in (0, 1)")


def _require_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"invalid {name}={value!r}: expected an integer >= {minimum}")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _training_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device={device!r}: {exc}; use e.g. 'cpu' or 'cuda'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid device={str(device)!r}: CUDA is not available here; use device='cpu'")
    return device


def read_corpus(path: str | os.PathLike) -> str:
    """Return the text of the corpus file, raising a genkit error that names the path on failure."""
    path = Path(path)
    if not path.exists():
        raise CorpusNotFoundError(f"corpus file {path} not found; pass the path of a UTF-8 text file")
    if not path.is_file():
        raise ConfigError(f"corpus path {path} is not a file; pass the path of a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"corpus file {path} is not valid UTF-8 ({exc}); convert it to UTF-8 text") from exc


def split_corpus(
    data: torch.Tensor, block_size: int, val_fraction: float, corpus_path: str | os.PathLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split token ids into a training part and a validation part (the end), each at least one window long.

    A window is ``block_size`` inputs plus the one target after them.
    """
    window = block_size + 1
    if len(data) == 0:
        raise ConfigError(
            f"corpus file {corpus_path} is empty; block_size={block_size} needs at least {2 * window} characters "
            "of text: one window of block_size + 1 characters for training and one for validation"
        )
    if len(data) < 2 * window:
        raise ConfigError(
            f"corpus {corpus_path} has {len(data)} characters, but block_size={block_size} needs at least "
            f"{2 * window}: one window of block_size + 1 characters for training and one for validation; "
            "use a longer text or a smaller block_size"
        )
    val_length = max(window, int(len(data) * val_fraction))
    val_length = min(val_length, len(data) - window)
    return data[: len(data) - val_length], data[len(data) - val_length :]


def sample_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``batch_size`` random windows: inputs (B, T) and the same windows shifted by one as targets (B, T)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    inputs = torch.stack([data[i : i + block_size] for i in starts.tolist()])  # (B, T)
    targets = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts.tolist()])  # (B, T)
    return inputs, targets


def learning_rate(step: int, steps: int, max_lr: float) -> float:
    """Return the learning rate of ``step``: linear warmup over the first 10%, then cosine decay to max_lr / 10."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    min_lr = max_lr / 10
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def train_loop(
    model: ToyGPT,
    data: torch.Tensor,
    steps: int,
    batch_size: int,
    max_lr: float,
    weight_decay: float,
    generator: torch.Generator,
    progress: bool,
) -> None:
    """Run ``steps`` AdamW steps on random windows of ``data``, showing the loss on a progress bar."""
    device = next(model.parameters()).device
    block_size = model.config.n_positions

    # Weight decay applies to matrices and embeddings only, not to biases and LayerNorm weights.
    # beta2 = 0.99 averages squared gradients over about 100 steps instead of AdamW's
    # default 1,000, which suits runs of a few thousand steps.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=max_lr,
        betas=(0.9, 0.99),
    )

    model.train()
    bar = tqdm(range(steps), desc="train-toy", unit="step", disable=not progress)
    try:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, max_lr)

            inputs, targets = sample_batch(data, block_size, batch_size, generator)
            loss = model.loss(inputs.to(device), targets.to(device))
            # .item() syncs with the device once per step, which the progress bar needs anyway.
            loss_value = loss.item()
            check_loss_finite(loss_value, f"at step {step + 1} of {steps}", max_lr)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    finally:
        bar.close()
    model.eval()


def check_loss_finite(loss: float, when: str, lr: float) -> None:
    """Raise :class:`ConfigError` for a NaN or infinite loss, the sign of a diverged run."""
    if not math.isfinite(loss):
        raise ConfigError(
            f"training diverged: the loss is {loss} {when} (lr={lr:g}); lower the learning rate "
            f"(--lr, default {DEFAULT_LR:g}); no checkpoint was written"
        )


@torch.no_grad()
def estimate_loss(
    model: ToyGPT, data: torch.Tensor, batch_size: int, batches: int, generator: torch.Generator
) -> float:
    """Return the mean loss over ``batches`` random batches of ``data``, with dropout off."""
    device = next(model.parameters()).device
    model.eval()
    losses = []
    for _ in range(batches):
        inputs, targets = sample_batch(data, model.config.n_positions, batch_size, generator)
        losses.append(model.loss(inputs.to(device), targets.to(device)).item())
    return sum(losses) / len(losses)


def is_toy_checkpoint(folder: Path) -> bool:
    """Return True if ``folder`` contains only toy checkpoint files and its config.json names the toy model."""
    names = {entry.name for entry in folder.iterdir()}
    if not names or not names <= CHECKPOINT_FILES or "config.json" not in names:
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


def check_out_dir(out_dir: Path) -> None:
    """Raise :class:`ConfigError` unless ``out_dir`` is absent, empty, or a toy checkpoint that may be replaced.

    An absent ``out_dir`` also needs a writable folder as its nearest existing ancestor.
    """
    if not out_dir.exists():
        ancestor = out_dir.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot create out_dir {out_dir}: {ancestor} is not a writable folder; pass a path in a writable folder"
            )
        return
    if not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} exists and is not a folder; pass a new folder path")
    if any(out_dir.iterdir()) and not is_toy_checkpoint(out_dir):
        raise ConfigError(
            f"out_dir {out_dir} is a non-empty folder that is not a toy checkpoint; "
            "pass a new or empty folder so that no other files are overwritten"
        )


def write_checkpoint_atomically(
    model: ToyGPT, tokenizer: CharTokenizer, out_dir: Path, generation_defaults: Mapping[str, Any]
) -> None:
    """Save the checkpoint into a temporary folder beside ``out_dir``, then rename it to ``out_dir``.

    An existing ``out_dir`` (empty, or an earlier toy checkpoint) is moved aside
    first and deleted only after the new folder is in place.
    """
    check_out_dir(out_dir)  # again: the folder may have changed while the model trained
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # os.mkdir applies the umask, unlike tempfile.mkdtemp (always 0700), so the
        # finished folder gets the same permissions as one the user creates.
        staging = parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
    except OSError as exc:
        raise ConfigError(
            f"cannot create a folder in {parent} for out_dir {out_dir}: {exc}; pass a writable path"
        ) from exc

    try:
        save_toy(model, tokenizer, staging, generation_defaults)
        if out_dir.exists():
            old = parent / f".{out_dir.name}.{uuid.uuid4().hex}.old"
            os.replace(out_dir, old)
            try:
                os.replace(staging, out_dir)
            except OSError:
                os.replace(old, out_dir)
                raise
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def add_train_toy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``genkit train-toy`` to ``parser``."""
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="UTF-8 text file to train on (default: the Shakespeare sonnets that ship with genkit)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default: {DEFAULT_STEPS})")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"random seed; the same seed, options and machine give the same weights (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="checkpoint folder to write; it must be new, empty, or an earlier toy checkpoint",
    )

    parser.add_argument(
        "--n-layer", type=int, default=DEFAULT_N_LAYER, help=f"transformer blocks (default: {DEFAULT_N_LAYER})"
    )
    parser.add_argument(
        "--n-head", type=int, default=DEFAULT_N_HEAD, help=f"attention heads per block (default: {DEFAULT_N_HEAD})"
    )
    parser.add_argument(
        "--n-embd",
        type=int,
        default=DEFAULT_N_EMBD,
        help=f"embedding width, a multiple of --n-head (default: {DEFAULT_N_EMBD})",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help=f"context window in characters, for training and generation (default: {DEFAULT_BLOCK_SIZE})",
    )

    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"windows per step (default: {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help=f"peak AdamW learning rate (default: {DEFAULT_LR})"
    )
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout probability during training (default: 0)")

    parser.add_argument("--device", default="cpu", help="torch device to train on, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_train_toy(args: argparse.Namespace) -> int:
    """Run ``genkit train-toy`` with parsed arguments, print a summary and return the exit status.

    genkit errors (bad options, missing corpus) propagate to the CLI's error handler.
    """
    summary = train_toy(
        args.corpus,
        args.steps,
        args.seed,
        args.out,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        f"trained {summary.parameters:,} parameters on {summary.corpus_chars:,} characters "
        f"for {summary.steps} steps in {summary.seconds:.1f} s: "
        f"train loss {summary.train_loss:.3f}, val loss {summary.val_loss:.3f}"
    )
    print(f"saved checkpoint to {summary.out_dir}")
    return 0
