"""The distillation library a practitioner can lift: losses and their argument checks, metrics
(calibration fitting included), model builders and loaders, the shipped data sets and text,
checkpoints, the reference training loops (``train.distill_epoch``, ``train_text.token_kd_step``),
tables, run-time settings and the files the lab trusts (``store``). It imports nothing from
``chapters``, ``lab``, ``scale`` or ``tools``: everything else stands on it."""
