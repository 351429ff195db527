"""`python -m bench`: run the benchmark suite or one scenario (`floor`: trio's own floor)."""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["floor"]:
    from bench.floor import main as floor_main

    raise SystemExit(floor_main(sys.argv[2:]))

from bench.run import main

raise SystemExit(main())
