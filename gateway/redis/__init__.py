"""Redis, two ways, on purpose.

    wire.py  the gateway's own RESP client for the request path (cache lookups, budget
             reservations): pipelined on one connection and about 10x cheaper per call than
             redis-py, measured on the hot path (benchmarks/README.md), which is why it exists.
    conn.py  redis-py's asyncio client for everything off the request path (purges, pub/sub,
             readiness), where a well-kept library beats a hand-written one.
"""
