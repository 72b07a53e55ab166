"""Text <-> token ids through the `tokenizers` library (tokenizer.json in the bundle)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from ..errors import BundleError


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"cannot read tokenizer {path} ({exc}); re-export the bundle") from None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


class StreamDecoder:
    """Turns a growing list of token ids into text increments, holding back a partial
    UTF-8 character until it completes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new
