"""Numerical kernels used by the networks (see :mod:`jtd3.ops.conv`)."""
