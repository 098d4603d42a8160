"""Redis, through the gateway's own RESP client only (``wire.py``).

    wire.py  pipelined commands on one connection, for the request path (cache lookups, budget
             reservations): about 10x cheaper per call than redis-py, measured on the hot path
             (benchmarks/README.md), which is why it exists; and pub/sub subscriptions.
    conn.py  the process's shared connection for everything off the request path (purges,
             prompt-label broadcasts, readiness).

redis-py served the off-path uses until 2026-12; it was dropped from the serving process
because importing it cost ~150 ms of start-up and ~9 MiB of memory per process (measured:
``import redis.asyncio`` after the gateway's own imports), for a PUBLISH, a SUBSCRIBE, a PING
and a SCAN, which the wire client already speaks.
"""
