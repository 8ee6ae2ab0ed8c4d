"""The auto-pipelined connections of the message path (gateway/coordinator/redis/pipe.py), against a real redis-server.

What the message path relies on: replies reach their own callers in order however many share a
loop turn; error replies come out as redis-py's classes; a script the server lost is loaded
again; a lost connection fails every waiting call as unreachable and the next call connects
again; a server that never answers fails the waiting calls instead of holding them for ever.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.coordinator.redis.errors import UNREACHABLE
from gateway.coordinator.redis.pipe import Pipe, Pipes, Script


def run(coro):
    return asyncio.run(coro)


def test_replies_reach_their_callers_in_order(redis_server):
    async def main():
        pipe = Pipe.from_url(redis_server.url)
        try:
            # 500 calls in one loop turn: one write; each caller gets its own reply.
            sets = [pipe.call("SET", f"pipe:k{i}", i) for i in range(500)]
            gets = [pipe.call("GET", f"pipe:k{i}") for i in range(500)]
            assert await asyncio.gather(*sets) == [b"OK"] * 500
            assert await asyncio.gather(*gets) == [str(i).encode() for i in range(500)]
        finally:
            pipe.close()

    run(main())


def test_error_replies_are_redis_py_errors_and_leave_the_others_alone(redis_server):
    async def main():
        pipe = Pipe.from_url(redis_server.url)
        try:
            ok1 = pipe.call("SET", "pipe:str", "x")
            bad = pipe.call("HGET", "pipe:str", "f")  # wrong type
            ok2 = pipe.call("GET", "pipe:str")
            assert await ok1 == b"OK"
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await bad
            assert await ok2 == b"x"
        finally:
            pipe.close()

    run(main())


def test_a_script_the_server_lost_is_loaded_again(redis_server):
    async def main():
        pipes = Pipes(redis_server.url)
        script = Script(pipes, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
        try:
            assert await script(["pipe:n"], [2]) == 2
            await pipes.call("pipe:n", "SCRIPT", "FLUSH")
            assert await script(["pipe:n"], [3]) == 5  # NOSCRIPT, then EVAL
        finally:
            pipes.close()

    run(main())


def test_a_lost_connection_fails_the_waiting_calls_as_unreachable_and_the_next_call_reconnects(redis_server):
    async def main():
        pipe = Pipe.from_url(redis_server.url)
        try:
            assert await pipe.call("PING") == b"PONG"
            waiting = pipe.call("BLPOP", "pipe:never", 0)  # waits until the connection goes
            killer = Pipe.from_url(redis_server.url)
            await killer.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            killer.close()
            with pytest.raises(RedisConnectionError) as e:
                await waiting
            assert isinstance(e.value, UNREACHABLE)
            assert await pipe.call("PING") == b"PONG"  # connected again
        finally:
            pipe.close()

    run(main())


def test_a_server_that_never_answers_fails_the_waiting_calls():
    # Not Redis: a socket that accepts and reads and never writes, as a hung server does.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def main():
        pipe = Pipe("127.0.0.1", port, timeout_s=0.2)
        try:
            with pytest.raises(RedisConnectionError):
                await pipe.call("PING")
        finally:
            pipe.close()

    try:
        run(main())
    finally:
        listener.close()


def test_an_unreachable_server_is_unreachable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        pipe = Pipe("127.0.0.1", port)
        with pytest.raises(UNREACHABLE):
            await pipe.call("PING")
        pipe.close()

    run(main())


def test_sent_counts_the_commands_a_node_sends_not_the_calls_its_scripts_make(redis_server):
    """The bench's node commands/msg: one EVAL is one command sent, whatever it calls inside Redis;
    redis-py connections made through `counted` count too."""
    import redis.asyncio as aioredis

    from gateway.coordinator.redis.pipe import Sent, counted

    async def main():
        pipe = Pipe.from_url(redis_server.url)
        client = aioredis.Redis.from_url(redis_server.url)
        client.connection_pool.connection_class = counted(client.connection_pool.connection_class)
        try:
            await client.ping()  # connects: the handshake's commands are sent too, and counted
            assert await pipe.call("PING") == b"PONG"
            before = Sent.commands
            three_calls = "redis.call('SET', KEYS[1], 1); redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])"
            assert await pipe.call("EVAL", three_calls, 1, "pipe:sent") == b"2"
            assert await pipe.call("GET", "pipe:sent") == b"2"
            assert Sent.commands - before == 2
            assert await client.get("pipe:sent") == b"2"
            assert Sent.commands - before == 3
        finally:
            pipe.close()
            await client.aclose()

    run(main())
