"""The CARLA 0.9.16 backend: the only package in jtd3 that talks to a CARLA server. See docs/carla.md.

- :mod:`~jtd3.backends.carla.session`: :class:`CarlaSession` (implements :class:`jtd3.backends.base.Backend`).
- :mod:`~jtd3.backends.carla.config`: :class:`CarlaConfig` (YAML section ``env.carla``).
- :mod:`~jtd3.backends.carla.errors`: :class:`CarlaError` and its subclasses.
- :mod:`~jtd3.backends.carla.probe`: the msgpack-rpc port probe (raw socket, no carla client).
- :mod:`~jtd3.backends.carla.sensors`: per-sensor queues matched on frame numbers, carla data -> NumPy.
- :mod:`~jtd3.backends.carla.client`: the carla wheel: import, version check, carla values and commands.
- :mod:`~jtd3.backends.carla.server_process`: a CARLA server started by the session (``carla.server_command``).

This ``__init__`` imports nothing, so that importing the light modules (the config, the errors) does not load
the session.
"""
