"""The REST server API (SERVER_API.md): the app, its OpenAPI document, metrics.

It steers rooms only through the `RoomService` protocol (service.py) and is
served by hypercorn on the node's trio loop (http.py).
"""
