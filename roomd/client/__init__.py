"""roomd's own client: the SDK that speaks PROTOCOL.md and encrypts as E2EE.md says.

It imports nothing of the server: an application depends on `roomd.client`
alone (anyio, wsproto, cbor2, cryptography).
"""
