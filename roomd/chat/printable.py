"""Text from others made safe for a terminal: what others wrote is shown, never obeyed.

Everything `roomd chat` puts on the screen that it did not write itself (message
text, reactions, AIDs, room ids, roomd's error messages) goes through
`printable` first, so an escape sequence cannot move the cursor, retitle the
window or clear the screen, and a bidirectional override cannot make a line
read other than it is.
"""

from __future__ import annotations

import unicodedata

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
_BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
REPLACEMENT = "\ufffd"


def printable(text: str) -> str:
    """Return `text` safe for a terminal: newline as ⏎, tab as space, other controls as �."""
    out: list[str] = []
    for char in text:
        if char == "\n":
            out.append(" ⏎ ")
        elif char == "\t":
            out.append(" ")
        elif unicodedata.category(char) == "Cc" or ord(char) in _BIDI:
            out.append(REPLACEMENT)
        else:
            out.append(char)
    return "".join(out)
