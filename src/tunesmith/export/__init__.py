"""Export a trained run (merged safetensors, the adapter, GGUF, files for vLLM), each verified against
base + adapter before it is declared done."""

from tunesmith.export.run import FORMATS, ExportError, ExportVerificationError, export_run

__all__ = ["FORMATS", "ExportError", "ExportVerificationError", "export_run"]
