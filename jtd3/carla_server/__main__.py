import sys

from jtd3.carla_server.cli import main

sys.exit(main())
