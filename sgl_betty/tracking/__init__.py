"""Run folders (and, later, W&B, figures and run comparison)."""

from .run_folder import RunFolder, atomic_torch_save, atomic_write_bytes, read_jsonl

__all__ = ["RunFolder", "atomic_torch_save", "atomic_write_bytes", "read_jsonl"]
