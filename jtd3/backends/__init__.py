"""The two backends behind :class:`jtd3.envs.DrivingEnv` and their contract.

- :mod:`jtd3.backends.base`: the contract (:class:`~jtd3.backends.base.Backend`, ego and actor states, camera
  frame, collision / lane-invasion events, vehicle control).
- :mod:`jtd3.backends.sim`: the embedded simulator (default).
- :mod:`jtd3.backends.carla`: a CARLA 0.9.16 server through the ``carla`` client.

Roads and routes, which both backends use, live in :mod:`jtd3.roads`.
"""
