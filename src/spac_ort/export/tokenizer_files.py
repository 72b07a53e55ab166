"""The tokenizer and its chat template, copied from the checkpoint into the bundle.

The chat template is the checkpoint's ``chat_template.jinja``, else the ``chat_template``
string of its ``tokenizer_config.json`` (for a list of named templates: the one named
``default``). Without tokenizer.json the bundle takes token ids only.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from .. import naming
from ..manifest import FileEntry, sha256_file

log = logging.getLogger(__name__)


def chat_template(model_dir: Path) -> Optional[str]:
    """The checkpoint's chat template source, or None."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def copy_tokenizer(model_dir: Path, bundle: Path) -> tuple[Optional[str], Optional[str], dict[str, FileEntry]]:
    """Copy tokenizer.json and the chat template into ``bundle``: their bundle paths (None
    where absent) and their file entries."""
    if not (model_dir / "tokenizer.json").is_file():
        log.warning("%s has no tokenizer.json; the bundle will take token ids only", model_dir)
        return None, None, {}
    (bundle / naming.TOKENIZER_DIR).mkdir()
    shutil.copyfile(model_dir / "tokenizer.json", bundle / naming.TOKENIZER_FILE)
    names = [naming.TOKENIZER_FILE]
    template = chat_template(model_dir)
    if template is not None:
        (bundle / naming.CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
        names.append(naming.CHAT_TEMPLATE_FILE)
    files = {n: FileEntry((bundle / n).stat().st_size, sha256_file(bundle / n)) for n in names}
    return naming.TOKENIZER_FILE, naming.CHAT_TEMPLATE_FILE if template is not None else None, files
