from __future__ import annotations

from roomd.cli import main

main()
