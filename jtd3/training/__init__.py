"""The training loop's parts; the loop itself is :class:`jtd3.train.Trainer` (``python -m jtd3.train``).

- :mod:`~jtd3.training.config`: :class:`TrainConfig` (YAML section ``train``) and :class:`ActorsConfig`
  (``train.actors``: who steps the environments).
- :mod:`~jtd3.training.exploration`: the warm-up policy that drives the car around, the action-noise schedule.
- :mod:`~jtd3.training.bookkeeping`: episode and evaluation seeds, episode sums, the evaluation summary,
  update-metric means.
- :mod:`~jtd3.training.resume`: the checkpoints a resume tries, the config keys that define the saved state, the
  evaluation rows and checkpoints a resume supersedes.
- :mod:`~jtd3.training.workers` and :mod:`~jtd3.training.parallel`: N environments in worker processes, stepping
  while the learner updates (``train.actors.kind: process``).
- :mod:`~jtd3.training.ray_actors`: N Ray actors, one per CARLA server, on any machine (``kind: ray``).
"""
