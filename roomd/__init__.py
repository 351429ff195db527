"""roomd: the real-time relay of end-to-end-encrypted chat rooms."""

from __future__ import annotations

__version__ = "0.1.0"
PROTOCOL_NAME = "roomd.v1"
