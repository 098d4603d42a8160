"""The replay check: a fixed set of /v1 requests whose answers, headers and ledger rows are recorded
(``python -m tests.replay.record``) and compared with ``recorded.json`` (``tests/test_replay.py``).

It talks to the gateway only through its CLI and HTTP, never through its modules, so the same
recorder runs unchanged against source trees whose internals differ. See README.md here.
"""
