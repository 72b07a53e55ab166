"""Chat messages -> prompt text through the bundle's chat template (jinja, sandboxed: the
template comes with the bundle, which may come from a stranger)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from .protocol import RequestError


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self._errors = TemplateError
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ValueError(f"the bundle's chat template does not compile ({exc})") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_bundle(cls, bundle: Path, template: Optional[str], bos: str, eos: str) -> Optional["ChatTemplate"]:
        """The template at ``bundle/template`` (the manifest's path), or None without one."""
        if template is None:
            return None
        return cls((bundle / template).read_text(encoding="utf-8"), bos, eos)

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text for ``messages``, ending where the assistant's reply begins."""
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except Exception as exc:  # noqa: BLE001 - any failure of a stranger's template is the request's
            raise RequestError(400, f"the model's chat template rejected the messages ({exc})", "messages") from None


def _raise(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)
