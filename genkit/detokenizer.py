"""Incremental detokenization for streaming.

Byte-level BPE splits multi-byte characters across tokens, so decoding one token
at a time would print replacement characters. The detokenizer decodes a short
window of recent tokens and releases text only once it no longer ends in an
incomplete character (U+FFFD), the prefix/read-offset scheme used by the Hugging
Face text-generation-inference server.

For byte-level BPE (GPT-2) and the character tokenizer, the tests check on random
id sequences that:

- the text released after each token is a prefix of ``tokenizer.decode(ids)`` for
  the whole sequence, so no delta is ever taken back;
- the deltas of :meth:`IncrementalDetokenizer.add`, followed by
  :meth:`IncrementalDetokenizer.flush`, join to ``tokenizer.decode(ids)``;
- a U+FFFD is released before the flush only where the ids themselves are not
  valid UTF-8 (an invalid byte followed by more text), never for a character
  whose bytes are still arriving.

The flush releases an incomplete character at the very end as U+FFFD, exactly as
``tokenizer.decode`` shows it.

NOTE: while the decoded window ends in U+FFFD it keeps growing, so a long run of
invalid bytes costs one decode of the whole run per token until valid text follows.
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
        self._prefix_text = ""  # decode(token_ids[prefix_offset:read_offset]), kept until the offsets move

    def add(self, token_id: int) -> str:
        """Append one token and return the newly complete text (may be empty)."""
        self.token_ids.append(token_id)
        new_text = self.tokenizer.decode(self.token_ids[self._prefix_offset :])
        # A trailing U+FFFD is a character whose bytes may still be arriving: hold it back.
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        # Decoded on its own rather than sliced from new_text: a tokenizer may decode a
        # window's first token differently, for example without its leading space.
        self._prefix_text = self.tokenizer.decode(self.token_ids[self._prefix_offset : self._read_offset])
        self.text += delta
        return delta

    def flush(self) -> str:
        """Release the held-back text at the end of generation; an incomplete last character becomes U+FFFD."""
        new_text = self.tokenizer.decode(self.token_ids[self._prefix_offset :])
        delta = new_text[len(self._prefix_text) :] if len(new_text) > len(self._prefix_text) else ""
        self._prefix_offset = self._read_offset = len(self.token_ids)
        self._prefix_text = ""
        self.text += delta
        return delta
