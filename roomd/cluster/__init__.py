"""The cluster backend: rooms shared by several roomd nodes through Redis (CLUSTER.md).

Built in steps. So far: `events.py`, the one atomic step by which a room's
event is numbered, appended to the room's stream (messages) and published to
its channel, in a Redis function (`functions.py`).
"""
