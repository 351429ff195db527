"""`python -m bench`: run the benchmark suite or one scenario."""

from __future__ import annotations

from bench.run import main

raise SystemExit(main())
