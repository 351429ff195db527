"""The Redis function library `roomd`: each room operation as one atomic step in Redis.

Loaded with `FUNCTION LOAD REPLACE` by every node at start (the same text on
every node, so loading is idempotent). Redis runs one function at a time, so a
room's state change, its event number, its `seq`, its stream append and its
publish happen together, in one order for every node, with no lock between
nodes. The rules are the core `Room`'s (roomd/core/room.py), ported; a
property test holds the two to the same answers.

Keys of room R (the `{R}` hash tag keeps a room's keys together):

| key | type | what |
|---|---|---|
| `roomd:{R}` | hash | host, key, keyEpoch, epoch, created, empty, seq, event, prefix, joins |
| `roomd:{R}:members` | sorted set | present AIDs, scored by join order (lowest: next host) |
| `roomd:{R}:pk` | hash | AID -> its public key (CBOR, as the node passed it) |
| `roomd:{R}:conns` | hash | connection (`<node>/<n>`) -> AID |
| `roomd:{R}:count` | hash | AID -> its connections in the room |
| `roomd:{R}:nodes` | hash | node -> its connections in the room |
| `roomd:{R}:bans` | set | banned AIDs |
| `roomd:{R}:stream` | stream | messages: id `<seq>-0`, fields `a` sender, `t` ts, `b` body (CBOR) |
| `roomd:{R}:op:<id>` | string | the reply to operation `<id>` (msgpack), kept `OP_TTL_MS` |
| `roomd:{R}` (channel) | sharded pub/sub | every event: a JSON header, a newline, the body |

(`empty`: since when the room is empty, absent while occupied; `prefix`: of
its message ids; `joins`: the join counter that orders members.)

Keys of one Redis instance (its rooms only):

| key | type | what |
|---|---|---|
| `roomd:rooms` | sorted set | every room, scored by creation time |
| `roomd:empty` | sorted set | empty rooms, scored by emptySince (expiry) |
| `roomd:hosted` | hash | AID -> rooms it hosts |
| `roomd:node:<node>:rooms` | set | rooms where `<node>` holds a connection |

Every operation takes `deadline_ms` and an operation id first. Past the
deadline on Redis's own clock nothing happens and the reply is `late` (the
node has answered its client `unavailable`, so the operation must never
apply later); an operation id seen before returns the first reply and
changes nothing (a node whose reply was lost asks again and learns the truth).
An empty operation id is not remembered. Replies: `{'ok', event, ...}` or
`{'err', code, message[, keyEpoch]}`; `event` is the room's event number once
the operation is applied: every published event takes the next one, so a node
sees any gap in what it received.
"""

from __future__ import annotations

LIBRARY_NAME = "roomd"
# How long Redis remembers an operation's reply: well past any node's timeout.
OP_TTL_MS = 60_000

CREATE = "roomd_create"
JOIN = "roomd_join"
LEAVE = "roomd_leave"
MESSAGE = "roomd_message"
TYPING = "roomd_typing"
REACTION = "roomd_reaction"
SIGNAL = "roomd_signal"
UPDATE_KEY = "roomd_update_key"
TRANSFER_HOST = "roomd_transfer_host"
KICK = "roomd_kick"
UNBAN = "roomd_unban"
DELETE = "roomd_delete"
EXPIRE = "roomd_expire"
SWEEP = "roomd_sweep"
RESTORE = "roomd_restore"

LIBRARY = (
    """#!lua name=roomd

local OP_TTL_MS = @OP_TTL_MS@

local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The fence and the memory of operations: a reply to return at once, or nil.
local function begin(room, args)
  if clock_ms() > tonumber(args[1]) then
    return {'late'}
  end
  if args[2] ~= '' then
    local done = redis.call('GET', room .. ':op:' .. args[2])
    if done then
      return cmsgpack.unpack(done)
    end
  end
  return nil
end

local function finish(room, args, reply)
  if args[2] ~= '' then
    redis.call('SET', room .. ':op:' .. args[2], cmsgpack.pack(reply), 'PX', OP_TTL_MS)
  end
  return reply
end

-- A room operation: `apply(room, args)` returns its reply, under the fence and
-- the memory of operations (keys: the room; args: deadline, op id, then its own).
local function operation(apply)
  return function(keys, args)
    local room = keys[1]
    local done = begin(room, args)
    if done then
      return done
    end
    return finish(room, args, apply(room, args))
  end
end

local function err(code, message, extra)
  if extra ~= nil then
    return {'err', code, message, extra}
  end
  return {'err', code, message}
end

local function room_id(room)
  return string.sub(room, 8, -2)
end

local function publish(room, header, body)
  local event = redis.call('HINCRBY', room, 'event', 1)
  table.insert(header, 2, event)
  redis.call('SPUBLISH', room, cjson.encode(header) .. '\\n' .. (body or ''))
  return event
end

local function hosted_changed(old, new)
  if old == new then
    return
  end
  if old and old ~= '' then
    if redis.call('HINCRBY', 'roomd:hosted', old, -1) <= 0 then
      redis.call('HDEL', 'roomd:hosted', old)
    end
  end
  if new and new ~= '' then
    redis.call('HINCRBY', 'roomd:hosted', new, 1)
  end
end

local function set_host(room, new)
  local old = redis.call('HGET', room, 'host')
  hosted_changed(old, new)
  redis.call('HSET', room, 'host', new)
end

local function member_aid(room, conn)
  return redis.call('HGET', room .. ':conns', conn)
end

local function require_member(room, conn)
  local aid = member_aid(room, conn)
  if not aid then
    return nil, err('notMember', "not a member of room '" .. room_id(room) .. "'")
  end
  return aid, nil
end

local function require_host(room, conn)
  local aid, refused = require_member(room, conn)
  if refused then
    return nil, refused
  end
  if aid ~= redis.call('HGET', room, 'host') then
    return nil, err('forbidden', 'only the host may do this')
  end
  return aid, nil
end

-- The room must exist, and `conn` ('' for the server API) must be its host.
local function require_room_and_host(room, conn)
  if redis.call('EXISTS', room) == 0 then
    return err('notFound', "no room '" .. room_id(room) .. "'")
  end
  if conn ~= '' then
    local _, refused = require_host(room, conn)
    return refused
  end
  return nil
end

local function is_present(room, aid)
  return redis.call('ZSCORE', room .. ':members', aid) ~= false
end

local function not_present(room, aid)
  return err('notFound', "'" .. aid .. "' is not in room '" .. room_id(room) .. "'")
end

local function node_of(conn)
  return string.match(conn, '^(.*)/[^/]*$') or conn
end

local function count_node(room, conn, delta)
  local node = node_of(conn)
  local left = redis.call('HINCRBY', room .. ':nodes', node, delta)
  if left <= 0 then
    redis.call('HDEL', room .. ':nodes', node)
    redis.call('SREM', 'roomd:node:' .. node .. ':rooms', room_id(room))
  elseif delta > 0 then
    redis.call('SADD', 'roomd:node:' .. node .. ':rooms', room_id(room))
  end
end

-- After `aid` lost its last connection: the room empties, or the host moves.
-- Returns the new host, or '' when it did not change.
local function after_aid_left(room, aid, now)
  if redis.call('HLEN', room .. ':conns') == 0 then
    redis.call('HSET', room, 'empty', now)
    redis.call('ZADD', 'roomd:empty', now, room_id(room))
    return ''
  end
  if aid == redis.call('HGET', room, 'host') then
    local first = redis.call('ZRANGE', room .. ':members', 0, 0)[1]
    set_host(room, first)
    return first
  end
  return ''
end

-- Take one connection out; returns whether its AID is gone, and the new host.
local function remove_conn(room, conn, aid, now)
  redis.call('HDEL', room .. ':conns', conn)
  count_node(room, conn, -1)
  if redis.call('HINCRBY', room .. ':count', aid, -1) > 0 then
    return 0, ''
  end
  redis.call('HDEL', room .. ':count', aid)
  redis.call('ZREM', room .. ':members', aid)
  redis.call('HDEL', room .. ':pk', aid)
  return 1, after_aid_left(room, aid, now)
end

local function snapshot(room, event, replay)
  local state = redis.call(
    'HMGET', room, 'host', 'key', 'keyEpoch', 'seq', 'epoch', 'prefix', 'created')
  local members = {}
  for _, aid in ipairs(redis.call('ZRANGE', room .. ':members', 0, -1)) do
    table.insert(members, aid)
    table.insert(members, redis.call('HGET', room .. ':pk', aid))
  end
  return {'ok', event, state[1] or '', state[2] or '', tonumber(state[3]), tonumber(state[4]),
          state[5], state[6], tonumber(state[7]), members, replay}
end

local function wipe(room)
  local host = redis.call('HGET', room, 'host')
  hosted_changed(host, nil)
  for _, node in ipairs(redis.call('HKEYS', room .. ':nodes')) do
    redis.call('SREM', 'roomd:node:' .. node .. ':rooms', room_id(room))
  end
  redis.call('ZREM', 'roomd:rooms', room_id(room))
  redis.call('ZREM', 'roomd:empty', room_id(room))
  redis.call('DEL', room, room .. ':members', room .. ':pk', room .. ':conns', room .. ':count',
             room .. ':nodes', room .. ':bans', room .. ':stream')
end

local function delete_room(room, reason)
  local event = publish(room, {'deleted', reason})
  wipe(room)
  return event
end

local function kick_aid(room, aid, now)
  local conns = {}
  local all = redis.call('HGETALL', room .. ':conns')
  for i = 1, #all, 2 do
    if all[i + 1] == aid then
      table.insert(conns, all[i])
    end
  end
  for _, conn in ipairs(conns) do
    redis.call('HDEL', room .. ':conns', conn)
    count_node(room, conn, -1)
  end
  redis.call('HDEL', room .. ':count', aid)
  redis.call('ZREM', room .. ':members', aid)
  redis.call('HDEL', room .. ':pk', aid)
  local new_host = after_aid_left(room, aid, now)
  return publish(room, {'kicked', aid, new_host, conns})
end

-- Store a new, empty room (its creation time is now, on Redis's clock); return that time.
local function new_room(room, host, key, key_epoch, epoch, prefix, seq)
  local now = clock_ms()
  redis.call('HSET', room, 'host', host, 'keyEpoch', key_epoch, 'epoch', epoch, 'created', now,
             'empty', now, 'seq', seq, 'event', 0, 'prefix', prefix, 'joins', 0)
  if key then
    redis.call('HSET', room, 'key', key)
  end
  hosted_changed(nil, host)
  redis.call('ZADD', 'roomd:rooms', now, room_id(room))
  redis.call('ZADD', 'roomd:empty', now, room_id(room))
  return now
end

-- keys: room; args: deadline, op, host ('' none), has key (0/1), key, epoch,
-- prefix, max_rooms, max_rooms_per_aid, by_api (0/1), rooms elsewhere, hosted
-- elsewhere (on the cluster's other Redis instances)
local function create(room, args)
  if redis.call('EXISTS', room) == 1 then
    return {'exists'}
  end
  local host, max_rooms, per_aid = args[3], tonumber(args[8]), tonumber(args[9])
  local rooms_elsewhere, hosted_elsewhere = tonumber(args[11] or 0), tonumber(args[12] or 0)
  if max_rooms > 0 and redis.call('ZCARD', 'roomd:rooms') + rooms_elsewhere >= max_rooms then
    return err(
      'tooManyRooms', 'this server holds its limit of ' .. max_rooms .. ' rooms')
  end
  if args[10] == '0' and host ~= '' and per_aid > 0 and
     tonumber(redis.call('HGET', 'roomd:hosted', host) or '0') + hosted_elsewhere >= per_aid then
    return err(
      'tooManyRooms', "'" .. host .. "' already hosts " .. per_aid .. ' rooms')
  end
  local key = args[4] == '1' and args[5] or nil
  return {'ok', 0, new_room(room, host, key, 0, args[6], args[7], 0)}
end

-- keys: room; args: deadline, op, conn, aid, public key (CBOR), max_members,
-- since epoch ('' none), since seq, replay limit
local function join(room, args)
  if redis.call('EXISTS', room) == 0 then
    return err('notFound', "no room '" .. room_id(room) .. "'")
  end
  local conn, aid, pk, max_members = args[3], args[4], args[5], tonumber(args[6])
  local current = tonumber(redis.call('HGET', room, 'event'))
  if member_aid(room, conn) then
    return snapshot(room, current, {})
  end
  if redis.call('SISMEMBER', room .. ':bans', aid) == 1 then
    return err(
      'forbidden', "'" .. aid .. "' is banned from room '" .. room_id(room) .. "'")
  end
  local new_aid = not is_present(room, aid)
  if new_aid then
    if redis.call('ZCARD', room .. ':members') >= max_members then
      return err(
        'roomFull', "room '" .. room_id(room) .. "' is full (" .. max_members .. ' members)')
    end
    redis.call('ZADD', room .. ':members', redis.call('HINCRBY', room, 'joins', 1), aid)
    redis.call('HSET', room .. ':pk', aid, pk)
  end
  local was_empty = redis.call('HLEN', room .. ':conns') == 0
  local new_host = was_empty and redis.call('HGET', room, 'host') ~= aid
  if new_host then
    set_host(room, aid)
  end
  redis.call('HSET', room .. ':conns', conn, aid)
  redis.call('HINCRBY', room .. ':count', aid, 1)
  count_node(room, conn, 1)
  if was_empty then
    redis.call('HDEL', room, 'empty')
    redis.call('ZREM', 'roomd:empty', room_id(room))
  end
  local header = {'joined', conn, aid, new_aid and 1 or 0, new_host and 1 or 0}
  local event = publish(room, header, new_aid and pk or '')
  local replay = {}
  local since_seq, limit = tonumber(args[8]), tonumber(args[9])
  local seq = tonumber(redis.call('HGET', room, 'seq'))
  if args[7] == redis.call('HGET', room, 'epoch') and since_seq < seq and
     seq - since_seq <= limit then
    for _, entry in ipairs(redis.call('XRANGE', room .. ':stream', (since_seq + 1) .. '-0', '+',
                                      'COUNT', seq - since_seq)) do
      local f = entry[2]
      table.insert(replay, {entry[1], f[2], f[4], f[6]})
    end
  end
  return snapshot(room, event, replay)
end

-- keys: room; args: deadline, op, conn, reason, asked (1: leaveChatroom)
local function leave(room, args)
  local conn, reason = args[3], args[4]
  local aid = member_aid(room, conn)
  if not aid then
    if args[5] == '1' then
      return err('notMember', "not a member of room '" .. room_id(room) .. "'")
    end
    return {'ok', 0}
  end
  local gone, new_host = remove_conn(room, conn, aid, clock_ms())
  return {'ok', publish(room, {'left', conn, aid, reason, gone, new_host})}
end

-- keys: room; args: deadline, op, conn, history size, key epoch ('' none); body
local function message(room, args)
  local aid, refused = require_member(room, args[3])
  if refused then return refused end
  local key_epoch = tonumber(redis.call('HGET', room, 'keyEpoch'))
  if args[5] ~= '' and tonumber(args[5]) ~= key_epoch then
    return err(
      'conflict', "the room's key epoch is " .. key_epoch, key_epoch)
  end
  local seq = redis.call('HINCRBY', room, 'seq', 1)
  local now = clock_ms()
  local size = tonumber(args[4])
  if size > 0 then
    redis.call('XADD', room .. ':stream', 'MAXLEN', '=', size, seq .. '-0',
               'a', aid, 't', now, 'b', args[6])
  end
  return {'ok', publish(room, {'message', seq, aid, now}, args[6]), seq}
end

-- keys: room; args: deadline, op, conn, typing (0/1)
local function typing(room, args)
  local aid, refused = require_member(room, args[3])
  if refused then return refused end
  return {'ok', publish(room, {'typing', aid, tonumber(args[4])})}
end

-- keys: room; args: deadline, op, conn; body
local function reaction(room, args)
  local aid, refused = require_member(room, args[3])
  if refused then return refused end
  return {'ok', publish(room, {'reaction', aid}, args[4])}
end

-- keys: room; args: deadline, op, conn, max_members, body, then each target AID
local function signal(room, args)
  local aid, refused = require_member(room, args[3])
  if refused then return refused end
  local max_members = tonumber(args[4])
  if #args - 5 > max_members then
    return err(
      'badRequest', 'a signal batch holds at most ' .. max_members .. ' entries')
  end
  local targets = {}
  for i = 6, #args do
    if not is_present(room, args[i]) then
      return not_present(room, args[i])
    end
    table.insert(targets, args[i])
  end
  return {'ok', publish(room, {'signal', aid, targets}, args[5])}
end

-- keys: room; args: deadline, op, conn, key epoch ('' none), key
local function update_key(room, args)
  local aid, refused = require_host(room, args[3])
  if refused then return refused end
  local opened = tonumber(redis.call('HGET', room, 'keyEpoch')) + 1
  if args[4] ~= '' and tonumber(args[4]) ~= opened then
    return err('conflict', 'the next key epoch is ' .. opened, opened - 1)
  end
  redis.call('HSET', room, 'key', args[5], 'keyEpoch', opened)
  return {'ok', publish(room, {'key', aid, opened}, args[5])}
end

-- keys: room; args: deadline, op, conn, to
local function transfer_host(room, args)
  local _, refused = require_host(room, args[3])
  if refused then return refused end
  if not is_present(room, args[4]) then
    return not_present(room, args[4])
  end
  set_host(room, args[4])
  return {'ok', publish(room, {'host', args[4]})}
end

-- keys: room; args: deadline, op, conn ('' for the server API), aid, ban (0/1)
local function kick(room, args)
  if redis.call('EXISTS', room) == 0 then
    return err('notFound', "no room '" .. room_id(room) .. "'")
  end
  local conn, aid, ban = args[3], args[4], args[5] == '1'
  if conn ~= '' then
    local host, refused = require_host(room, conn)
    if refused then return refused end
    if aid == host then
      return err(
        'badRequest', 'the host cannot kick itself; use leaveChatroom')
    end
    if not is_present(room, aid) then
      return not_present(room, aid)
    end
  end
  if ban then
    redis.call('SADD', room .. ':bans', aid)
  end
  if not is_present(room, aid) then
    if ban then
      return {'ok', tonumber(redis.call('HGET', room, 'event'))}
    end
    return not_present(room, aid)
  end
  return {'ok', kick_aid(room, aid, clock_ms())}
end

-- keys: room; args: deadline, op, conn ('' for the server API), aid
local function unban(room, args)
  local refused = require_room_and_host(room, args[3])
  if refused then return refused end
  if redis.call('SREM', room .. ':bans', args[4]) == 0 then
    return err('notFound', "'" .. args[4] .. "' is not banned from this room")
  end
  return {'ok', tonumber(redis.call('HGET', room, 'event'))}
end

-- keys: room; args: deadline, op, conn ('' for the server API), reason
local function delete(room, args)
  local refused = require_room_and_host(room, args[3])
  if refused then return refused end
  return {'ok', delete_room(room, args[4])}
end

-- keys: none; args: room_ttl_ms, at most how many; deletes rooms empty for the ttl
local function expire(keys, args)
  local cutoff = clock_ms() - tonumber(args[1])
  local expired = redis.call(
    'ZRANGEBYSCORE', 'roomd:empty', '-inf', cutoff, 'LIMIT', 0, tonumber(args[2]))
  for _, id in ipairs(expired) do
    local room = 'roomd:{' .. id .. '}'
    if redis.call('HLEN', room .. ':conns') == 0 then
      delete_room(room, 'expired')
    else
      redis.call('ZREM', 'roomd:empty', id)
    end
  end
  return expired
end

-- keys: room; args: node; takes every connection of `node` out ('disconnected')
local function sweep(keys, args)
  local room = keys[1]
  local prefix = args[1] .. '/'
  local now = clock_ms()
  local all = redis.call('HGETALL', room .. ':conns')
  local swept = 0
  for i = 1, #all, 2 do
    local conn, aid = all[i], all[i + 1]
    if string.sub(conn, 1, #prefix) == prefix then
      local gone, new_host = remove_conn(room, conn, aid, now)
      publish(room, {'left', conn, aid, 'disconnected', gone, new_host})
      swept = swept + 1
    end
  end
  redis.call('SREM', 'roomd:node:' .. args[1] .. ':rooms', room_id(room))
  return swept
end

-- keys: room; args: host ('' none), has key (0/1), key, key epoch, epoch, prefix, seq.
-- A room Redis lost, brought back by a node that still serves it: empty, with
-- a new epoch, numbering on above every seq that node delivered. If another
-- node brought it back first, only its seq is raised.
local function restore(keys, args)
  local room = keys[1]
  local seq = tonumber(args[7])
  if redis.call('EXISTS', room) == 1 then
    if tonumber(redis.call('HGET', room, 'seq')) < seq then
      redis.call('HSET', room, 'seq', seq)
    end
    return {'exists'}
  end
  local key = args[2] == '1' and args[3] or nil
  new_room(room, args[1], key, args[4], args[5], args[6], seq)
  return {'ok', 0}
end

redis.register_function('roomd_restore', restore)
redis.register_function('roomd_create', operation(create))
redis.register_function('roomd_join', operation(join))
redis.register_function('roomd_leave', operation(leave))
redis.register_function('roomd_message', operation(message))
redis.register_function('roomd_typing', operation(typing))
redis.register_function('roomd_reaction', operation(reaction))
redis.register_function('roomd_signal', operation(signal))
redis.register_function('roomd_update_key', operation(update_key))
redis.register_function('roomd_transfer_host', operation(transfer_host))
redis.register_function('roomd_kick', operation(kick))
redis.register_function('roomd_unban', operation(unban))
redis.register_function('roomd_delete', operation(delete))
redis.register_function('roomd_expire', expire)
redis.register_function('roomd_sweep', sweep)
"""
).replace("@OP_TTL_MS@", str(OP_TTL_MS))
