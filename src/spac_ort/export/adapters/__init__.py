"""Architecture adapters, registered by Hugging Face ``model_type``."""

from . import deepseek, mixtral, olmoe, qwen_moe  # noqa: F401  (registration side effects)
from .base import ADAPTERS, Adapter, adapter_for

__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
