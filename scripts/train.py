#!/usr/bin/env python
"""Train TD3 on the embedded simulator (default) or a CARLA server: a thin wrapper of ``jtd3-train``
(:mod:`jtd3.cli`; also ``python -m jtd3.train``).

    python scripts/train.py --norm layernorm                # the main job: short run on the embedded simulator
    python scripts/train.py --norm layernorm --max-timesteps 1000000 --eval-freq 20000 --checkpoint-freq 20000
    python scripts/train.py --env carla --carla-host localhost --carla-port 2000
    python scripts/train.py --resume runs/<run>             # continue a run exactly where its checkpoint left it
    python scripts/train.py --help                          # every flag; --set key.sub=value for any config key
"""

from jtd3.cli import main

if __name__ == "__main__":
    main()  # jtd3-train's console entry: re-executes once for huge pages (jtd3.machine), then trains
