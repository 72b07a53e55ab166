"""Export a Hugging Face MoE checkpoint into a spac-ort bundle (needs the ``export`` extra)."""

from .pipeline import ExportOptions, ExportResult, export_bundle

__all__ = ["ExportOptions", "ExportResult", "export_bundle"]
