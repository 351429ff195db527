"""`python -m bench`: the suite, one scenario, `floor` (trio's own) or `cluster` (the Redis hop)."""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["floor"]:
    from bench.floor import main as floor_main

    raise SystemExit(floor_main(sys.argv[2:]))
if sys.argv[1:2] == ["cluster"]:
    from bench.cluster import main as cluster_main

    raise SystemExit(cluster_main(sys.argv[2:]))

from bench.run import main

raise SystemExit(main())
