"""Transform benchmark from a checkout: the same as `posfeed bench transform` (options pass through).

    python bench/transform.py                      # full UCI Online Retail
    python bench/transform.py --synthetic --rows 2000 --repeat 1 --json

The measuring code lives in ``pipeline/benchmarks/transform.py`` (importable, so the command line
and the tests share it); results and method are in ``docs/BENCHMARKS.md`` ("Transform").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import main

if __name__ == "__main__":
    sys.argv = ["posfeed", "bench", "transform", *sys.argv[1:]]
    main()
