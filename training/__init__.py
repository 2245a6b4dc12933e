"""training: turn images into tuner artifacts on a frozen backbone.

- `data`, `augment`: image folders, CSVs and built-in tasks; deterministic per-(seed, image, view) augmentation.
- `methods`: bypass, linear probing, full fine-tuning, Res-Tuning (same trainer, same data).
- `feature_cache`: backbone features extracted once per view, only the layers and tokens the heads read.
- `trainer`: AdamW + cosine warm-up, validation, checkpoints/resume, multi-task heads, torchrun (DDP).
- `classify`: `restune train classify`; `demo_tasks`, `demo`: the 19-task demo suite and `restune demo`.
- `train_memory`, `accuracy`: `restune bench train-memory` and `restune bench accuracy`.
(`style*` and `diffusion_*` hold the diffusion style-tuner training.)
"""
