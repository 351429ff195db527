"""Driving `roomd chat` apps in tests: read a widget's text, wait (bounded) for a line."""

from __future__ import annotations

import time

from textual.pilot import Pilot
from textual.widgets import Input, Static

WAIT = 10.0
POLL = 0.05


def text(pilot: Pilot[None], selector: str) -> str:
    """Return the text a `Static` of the app shows (`#log`, `#members`, `#typing`, `#invite`)."""
    return str(pilot.app.query_one(selector, Static).content)


async def until(pilot: Pilot[None], selector: str, needle: str, wait: float = WAIT) -> str:
    """Return the text of `selector` once it holds `needle`; fail after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        shown = text(pilot, selector)
        if needle in shown:
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} did not show {needle!r} in {wait} s: {shown!r}")
        await pilot.pause(POLL)


async def until_gone(pilot: Pilot[None], selector: str, needle: str, wait: float = WAIT) -> str:
    """Return the text of `selector` once it no longer holds `needle`; fail after `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        shown = text(pilot, selector)
        if needle not in shown:
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} still shows {needle!r} after {wait} s: {shown!r}")
        await pilot.pause(POLL)


async def say(pilot: Pilot[None], line: str) -> None:
    """Put `line` into the input (as a paste would) and press Enter."""
    pilot.app.query_one("#input", Input).value = line
    await pilot.press("enter")
