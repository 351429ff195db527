"""The Redis function library `roomd`: each room operation as one atomic step in Redis.

Loaded with `FUNCTION LOAD REPLACE` by every node at start (the same text on
every node, so loading is idempotent). Keys of room R (the hash tag keeps a
room's keys together should the keys ever live in a Redis Cluster):

| key | type | what |
|---|---|---|
| `roomd:{R}` | hash | `event`: the room's last event number; `seq`: its last message seq |
| `roomd:{R}:stream` | stream | the room's messages, entry id `<seq>-0`, trimmed to history_size |
| `roomd:{R}:op:<op id>` | string | the reply to operation `<op id>`, kept `OP_TTL_MS` |
| `roomd:{R}` (channel) | sharded pub/sub | every event: `<event> <seq or 0> <kind> <payload>` |

`roomd_event(keys = [room, stream, op], args = [deadline_ms, history_size,
kind, payload])`:

1. Fence: when Redis's own clock (`TIME`) is past `deadline_ms`, nothing
   happens and the reply is `{"late"}`: the node has already answered its
   client `unavailable`, so the operation must never apply later.
2. Once only: when the op key holds a reply, that reply is returned and
   nothing else happens: a node whose reply was lost asks again with the same
   op id and learns what happened.
3. The event number goes up by one; for `kind == "message"` the seq too, and
   the payload is appended to the stream (`MAXLEN = history_size`; nothing is
   kept when it is 0).
4. The event is published on the room's channel (`SPUBLISH`), and the reply,
   `{"ok", event, seq}` (seq 0 for other kinds), kept under the op key.
"""

from __future__ import annotations

LIBRARY_NAME = "roomd"
EVENT_FUNCTION = "roomd_event"
# How long Redis remembers an operation's reply: well past any node's timeout.
OP_TTL_MS = 60_000

LIBRARY = f"""#!lua name={LIBRARY_NAME}

local function roomd_event(keys, args)
  local room, stream, op = keys[1], keys[2], keys[3]
  local deadline_ms, history_size = tonumber(args[1]), tonumber(args[2])
  local kind, payload = args[3], args[4]
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > deadline_ms then
    return {{'late'}}
  end
  local done = redis.call('GET', op)
  if done then
    return cjson.decode(done)
  end
  local event = redis.call('HINCRBY', room, 'event', 1)
  local seq = 0
  if kind == 'message' then
    seq = redis.call('HINCRBY', room, 'seq', 1)
    if history_size > 0 then
      redis.call('XADD', stream, 'MAXLEN', '=', history_size, seq .. '-0', 'p', payload)
    end
  end
  redis.call('SPUBLISH', room, event .. ' ' .. seq .. ' ' .. kind .. ' ' .. payload)
  local reply = {{'ok', event, seq}}
  redis.call('SET', op, cjson.encode(reply), 'PX', {OP_TTL_MS})
  return reply
end

redis.register_function('{EVENT_FUNCTION}', roomd_event)
"""
