"""The ablation pipeline (the paper's Tables III and IV)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
