"""Training, attack and timing loops, each readable alone: no store inside.

* :mod:`featcache.training.classification`: the fine-tuning loop (timm's optimizer,
  scheduler, augmentation, mixup and losses), a :class:`featcache.jobs.Trainer`;
* :mod:`featcache.training.attack`: untargeted l-inf PGD in pixel space and the loop that
  scores a model under attack (also a Trainer, so an attack resumes like a fine-tune);
* :mod:`featcache.training.timing`: throughput, latency, memory and FLOPs of a forward;
* :mod:`featcache.training.model`: classifiers on pixels (normalisation inside);
* :mod:`featcache.training.data`: resumable epochs with per-sample seeded augmentation.

The glue that reads the store, runs these and writes records is in
:mod:`featcache.runners` (``finetune``, ``robustness``, ``speed``).
"""
