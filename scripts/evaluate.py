#!/usr/bin/env python
"""Thin wrapper of ``jtd3-evaluate`` (:mod:`jtd3.evaluate_cli`): ``python scripts/evaluate.py --help``."""

import sys

from jtd3.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
