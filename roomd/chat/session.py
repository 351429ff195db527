"""Start `roomd chat`: connect, create the room or join the invite's, run the app on it.

Resource handling: `open_chat` owns the `SecureClient` for exactly its block
(leaving it closes the connection with 1000); the `ChatApp` it yields must
have ended before the block does.

Error handling: what can go wrong before the chat shows (no connection, a
refused token, a refused join, no room key) comes out of `open_chat` as a
`ChatError` whose message is meant for the user; anything else is a bug.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from roomd.chat.app import ChatApp
from roomd.chat.command import ChatOptions
from roomd.client.client import AuthenticationFailed, ConnectionLost, RequestError
from roomd.client.secure import NoRoomKey, SecureClient, connect_secure
from roomd.client.websocket import HandshakeRefused


class ChatError(Exception):
    """The chat could not start; the message says why, for the user."""


@contextlib.asynccontextmanager
async def open_chat(options: ChatOptions) -> AsyncIterator[ChatApp]:
    """Connect as `options` say, create or join the room, and yield its (not yet running) app.

    Raises:
        ChatError: roomd could not be reached or refused the token, the
            invite's room could not be joined, or a new room got no key.
    """
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                connect_secure(options.url, token=options.token)
            )
        except AuthenticationFailed as exc:
            raise ChatError(str(exc)) from None
        except (OSError, HandshakeRefused, TimeoutError) as exc:
            raise ChatError(f"cannot connect to {options.url}: {exc}") from None
        room_id = await _enter_room(client, options)
        yield ChatApp(client, room_id, created=options.invite is None)


async def _enter_room(client: SecureClient, options: ChatOptions) -> str:
    invite = options.invite
    try:
        if invite is None:
            return await client.create_room()
        return await client.join(invite)
    except RequestError as refused:
        what = "create a room" if invite is None else f"join room {invite.room_id}"
        raise ChatError(f"cannot {what}: {refused}") from None
    except NoRoomKey:
        raise ChatError("the new room got no key from roomd") from None
    except (ConnectionLost, TimeoutError):
        raise ChatError(f"roomd at {options.url} stopped answering") from None


async def chat(options: ChatOptions) -> int:
    """Run `roomd chat` in this terminal until the user quits; return the app's exit status.

    Raises:
        ChatError: the chat could not start (see `open_chat`).
    """
    async with open_chat(options) as app:
        await app.run_async()
        return app.return_code or 0
