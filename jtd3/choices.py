"""The named choices that several places offer: config fields, the networks' checks and the CLI flags.

One module without heavy imports, so the lists are written once and ``scripts/train.py --help`` shows them
without importing JAX.
"""

__all__ = ["ACTOR_KINDS", "BACKENDS", "ENCODERS", "NORMS"]

NORMS = ("none", "layernorm", "batchnorm", "hybrid")
"""``agent.norm``, normalization in the NatureCNN encoders (``jtd3.agent.networks``): ``none``; ``layernorm`` (LN
over (H, W, C) after each conv, LN after the dense layer); ``batchnorm`` (per-channel BN after each conv, nothing
after the dense layer); ``hybrid`` (BN after convs, LN after dense)."""
ENCODERS = ("separate", "shared", "original")
"""``agent.encoder``: the actor/critic encoder topology (``jtd3.agent.learn``)."""
BACKENDS = ("sim", "carla")
"""``env.backend``: the embedded simulator or a CARLA server."""
ACTOR_KINDS = ("inline", "process", "ray")
"""``train.actors.kind``: who steps the environments (docs/scaling.md)."""
