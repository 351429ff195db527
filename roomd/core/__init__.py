"""The sans-I/O core: every rule of roomd, as plain synchronous code.

Messages and codecs, room state, the per-connection state machine, the leaky
bucket, admission, tokens and the server-to-client events. Nothing here awaits,
reads a clock, touches a socket or a file, or logs: callers pass `now` and get
back what to do. Imports nothing of roomd but itself and `roomd.errors`
(import-linter checks it in `just test`).
"""
