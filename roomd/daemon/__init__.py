"""The trio shell: the server's nursery tree, connection readers, room loops,
the write path and the event bus. It moves bytes and time around the core and
decides nothing; every rule it applies is a call into `roomd.core`.
"""
