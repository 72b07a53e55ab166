"""A real `spac-serve` process per fixture, on exported demo bundles."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'spac-ort[serve]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install 'spac-ort[test]')")

# a ChatML template, as Qwen checkpoints carry
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Server:
    """``spac-serve BUNDLE --port 0 ...`` in a subprocess; ``url`` once it listens."""

    def __init__(self, bundle: Path, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "spac_ort.cli.serve", str(bundle), "--port", "0", "-q",
                                      *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "serving" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or self.proc.poll() is not None:
            raise RuntimeError(f"spac-serve did not start: {''.join(self.lines)}")
        port = re.search(r"127\.0\.0\.1:(\d+)", "".join(self.lines)).group(1)
        self.url = f"http://127.0.0.1:{port}"
        self.model = bundle.name

    def client(self, **kwargs):  # type: ignore[no-untyped-def]
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)

    def stop(self, timeout: float = 60) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            time.sleep(0.1)                      # the reader sees the last lines


@pytest.fixture(scope="session")
def chat_bundle(tmp_path_factory) -> Path:
    """The demo model exported with a chat template in its tokenizer config."""
    import json

    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.models import DEMO_DRAFT, DEMO_TARGET

    root = tmp_path_factory.mktemp("chat")
    target = root / "target"
    shutil.copytree(DEMO_TARGET, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    out = root / "chat-bundle"
    export_bundle(ExportOptions(target, out, draft_dir=DEMO_DRAFT, check_model=False))
    return out


@pytest.fixture(scope="module")
def server(chat_bundle):  # type: ignore[no-untyped-def]
    srv = Server(chat_bundle, "--queue-size", "8")
    yield srv
    srv.stop()
