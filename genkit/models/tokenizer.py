"""Tokenizers: the character tokenizer of the toy model and Hugging Face tokenizers.

Both follow :class:`Tokenizer`. :func:`load_tokenizer` picks one from the files in
a checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

from genkit.errors import CheckpointError, PromptError

CHAR_TOKENIZER_FILE = "char_tokenizer.json"


class Tokenizer(Protocol):
    """Text to token ids and back."""

    vocab_size: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
    """One token per character, over a fixed alphabet (the classic teaching tokenizer)."""

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the alphabet contains a character twice")
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eos_token_id: int | None = None

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the alphabet from every distinct character of ``text``, sorted."""
        return cls(sorted(set(text)))

    @classmethod
    def from_file(cls, path: Path) -> CharTokenizer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            chars = data["chars"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"invalid character tokenizer file {path}: {exc}; re-save the checkpoint") from exc
        if not isinstance(chars, (list, str)) or not all(isinstance(ch, str) and len(ch) == 1 for ch in chars):
            raise CheckpointError(
                f"invalid chars={chars!r} in {path}: expected a list of single characters; re-save the checkpoint"
            )
        try:
            return cls(chars)
        except ValueError as exc:
            raise CheckpointError(f"invalid character tokenizer file {path}: {exc}; re-save the checkpoint") from exc

    def save(self, folder: Path) -> None:
        payload = {"type": "char", "chars": self.chars}
        (Path(folder) / CHAR_TOKENIZER_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise PromptError(
                f"prompt contains characters outside the model's {self.vocab_size}-character vocabulary: "
                f"{shown}; use only characters the model was trained on"
            )
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (byte-level BPE for GPT-2) with the eos id of the checkpoint."""

    def __init__(self, tokenizer, eos_token_id: int | None):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = eos_token_id
        self.max_token_id = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Return the text of ``ids``; ids without a token decode to nothing.

        A model with a padded vocabulary can sample ids above ``max_token_id``.
        tokenizers 0.23 skips unknown ids that fit in 32 bits but raises
        OverflowError for others, so ids outside [0, max_token_id] are dropped here.
        """
        known = [i for i in ids if 0 <= i <= self.max_token_id]
        return self._tokenizer.decode(known, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; re-download or re-save the checkpoint") from exc


def _special_token_id(folder: Path, tokenizer, key: str) -> int | None:
    """Find a special token's id from tokenizer_config.json or special_tokens_map.json."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        token = _read_json(path).get(key)
        if isinstance(token, dict):  # AddedToken serialised as a dict
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    return None


def load_tokenizer(folder: Path, eos_token_id: int | None = None) -> Tokenizer:
    """Load the tokenizer stored in a checkpoint folder.

    Looks for ``char_tokenizer.json`` (toy models), then ``tokenizer.json``, then
    ``vocab.json`` + ``merges.txt`` (byte-level BPE, as GPT-2 ships it).
    ``eos_token_id`` from the model config wins over the tokenizer's own files.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    folder = Path(folder)
    if (folder / CHAR_TOKENIZER_FILE).is_file():
        tokenizer = CharTokenizer.from_file(folder / CHAR_TOKENIZER_FILE)
        tokenizer.eos_token_id = eos_token_id
        return tokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            raw = RawTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise CheckpointError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from exc
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        try:
            bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        except Exception as exc:
            raise CheckpointError(f"cannot read vocab.json/merges.txt in {folder}: {exc}") from exc
        raw = RawTokenizer(bpe)
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        added = folder / "added_tokens.json"
        if added.is_file():
            from tokenizers import AddedToken

            raw.add_special_tokens([AddedToken(tok, special=True) for tok in _read_json(added)])
        for token in ("<|endoftext|>",):
            if raw.token_to_id(token) is not None:
                raw.add_special_tokens([token])
    else:
        raise CheckpointError(
            f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json and merges.txt, "
            f"or {CHAR_TOKENIZER_FILE}; save the tokenizer next to the weights "
            "(tokenizer.save_pretrained(folder))"
        )

    if eos_token_id is None:
        eos_token_id = _special_token_id(folder, raw, "eos_token")
    return HFTokenizer(raw, eos_token_id)
