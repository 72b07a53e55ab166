"""Read config.json and safetensors weights of a Hugging Face checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_config(model_dir: Path) -> dict[str, Any]:
    if not model_dir.exists():
        raise CheckpointError(f"model directory {model_dir} does not exist; pass a Hugging Face checkpoint directory")
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a directory; pass a Hugging Face checkpoint directory")
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json; pass a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); re-download the checkpoint") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a JSON object; re-download the checkpoint")
    return cfg


class WeightStore:
    """Name -> tensor access over one or many safetensors shards, converted to float32."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._where: dict[str, Path] = {}
        index = model_dir / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is corrupt ({exc}); re-download the checkpoint") from None
            shards = sorted(set(weight_map.values()))
        elif (model_dir / SINGLE).is_file():
            weight_map, shards = None, [SINGLE]
        else:
            raise CheckpointError(
                f"{model_dir} has no {SINGLE} or {INDEX}; spac-export reads safetensors checkpoints only")
        self._handles = {}
        for shard in shards:
            path = model_dir / shard
            if not path.is_file():
                raise CheckpointError(f"checkpoint shard {shard} is missing from {model_dir}; re-download the checkpoint")
            try:
                handle = safe_open(str(path), framework="pt")
                names = list(handle.keys())
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(
                    f"checkpoint shard {shard} is truncated or corrupt ({exc}); re-download it") from None
            self._handles[shard] = handle
            for name in names:
                self._where[name] = path
        if weight_map is not None:
            missing = [n for n in weight_map if n not in self._where]
            if missing:
                raise CheckpointError(
                    f"tensor {missing[0]} listed in {INDEX} is not in its shard; re-download the checkpoint")

    def has(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        path = self._where.get(name)
        if path is None:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint in {self.model_dir}; "
                                  "the checkpoint is incomplete or of another architecture")
        try:
            tensor = self._handles[path.name].get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"tensor {name} in {path.name} cannot be read ({exc}); re-download the checkpoint") from None
        return tensor.to(torch.float32)
