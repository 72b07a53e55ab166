"""Text <-> token ids through the `tokenizers` library (tokenizer.json in the bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.decoders import DecodeStream

from ..errors import BundleError


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"cannot read tokenizer {path} ({exc}); re-export the bundle") from None

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special``: with the tokenizer's added special tokens
        (a BOS, for tokenizers that add one). A rendered chat template has its own."""
        return list(self._tok.encode(text, add_special_tokens=special).ids)

    def token_text(self, token: Optional[int]) -> str:
        """The text of one token id ("" for None or an unknown id)."""
        return (self._tok.id_to_token(token) or "") if token is not None else ""

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


class StreamDecoder:
    """Token ids -> text increments as they arrive (``tokenizers``' DecodeStream: each
    token costs the same, however long the output; a partial UTF-8 character is held back
    until it completes)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer._tok
        self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, token: int) -> str:
        return self._stream.step(self._tok, token) or ""
