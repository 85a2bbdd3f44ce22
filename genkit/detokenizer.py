"""Incremental detokenization for streaming.

Byte-level BPE splits multi-byte characters across tokens, so decoding one token
at a time would print replacement characters. The detokenizer decodes a short
window of recent tokens and releases text only once it no longer ends in an
incomplete character (U+FFFD), the prefix/read-offset scheme used by the Hugging
Face text-generation-inference server.
"""

from __future__ import annotations

from genkit.models.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = 0  # tokens before this are already released as text

    def add(self, token_id: int) -> str:
        """Append one token and return the newly complete text (may be empty)."""
        self.token_ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self._prefix_offset : self._read_offset])
        new_text = decode(self.token_ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Release held-back text at the end of generation, incomplete characters included."""
        prefix_text = self.tokenizer.decode(self.token_ids[self._prefix_offset : self._read_offset])
        new_text = self.tokenizer.decode(self.token_ids[self._prefix_offset :])
        delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        self._prefix_offset = self._read_offset = len(self.token_ids)
        self.text += delta
        return delta
