#!/usr/bin/env python3
"""Build TensorRT engines for an export folder: the same as ``sdrt build`` (see ``--help``).

    python scripts/build_engines.py build/tiny --backend tensorrt-rtx --static 512x512 --compute-capability 8.6,8.9
"""

import sys

from sdrt.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
