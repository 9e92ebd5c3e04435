"""The training loop's parts; the loop itself is :class:`jtd3.train.Trainer` (``python -m jtd3.train``).

- :mod:`~jtd3.training.config`: :class:`TrainConfig` (YAML section ``train``).
- :mod:`~jtd3.training.exploration`: the warm-up policy that drives the car around, the action-noise schedule.
- :mod:`~jtd3.training.bookkeeping`: episode and evaluation seeds, the evaluation summary, update-metric means.
- :mod:`~jtd3.training.resume`: the checkpoints a resume tries, the config keys that define the saved state.
"""
