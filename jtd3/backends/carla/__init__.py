"""The CARLA 0.9.16 backend: the only package in jtd3 that talks to a CARLA server. See docs/carla.md.

- :mod:`~jtd3.backends.carla.session`: :class:`CarlaSession` (implements :class:`jtd3.backends.base.Backend`).

This ``__init__`` imports nothing, so that importing the light modules (the config, the errors) does not load
the session.
"""
