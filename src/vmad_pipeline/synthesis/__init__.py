"""Mask-guided defect generation (IAD-Unify's third task, docs/generation.md): a small
conditional inpainting U-Net (``generator``), its training (``fit``), painting and MVTec-layout
trees (``render``), and fidelity statistics (``fidelity``)."""
