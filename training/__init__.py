"""training: turn images into tuner artifacts on a frozen backbone.

- `data`, `augment`: image folders, CSVs and built-in tasks; deterministic per-(seed, image, view) augmentation,
  used by default only on images of 128 px and more.
- `probe`: the default head initialisation, a linear probe fitted on the untrained bypass's features.
- `methods`: bypass, linear probing, full fine-tuning, Res-Tuning (same trainer, same data).
- `feature_cache`: backbone features extracted once per view, only the layers and tokens the heads read.
- `train_config`: a run's settings and the recipe's defaults, defined once (they are also `train classify`'s flags).
- `trainer`: AdamW + cosine warm-up, validation, checkpoints/resume, multi-task heads, torchrun (DDP).
- `classify`: `restune train classify`; `demo_tasks`, `demo`: the 19-task demo suite and `restune demo`.
(`style*` hold the diffusion style-tuner training; `restune bench accuracy` and `bench train-memory` live in
`bench/`.)
"""
