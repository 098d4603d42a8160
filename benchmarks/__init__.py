"""The gateway's benchmark suite: ``python -m benchmarks.run`` (see ``benchmarks/README.md``).

Never imported by the gateway and never timed in CI; ``tests/test_benchmark_harness.py`` only
checks that the harness runs end to end at a tiny scale.
"""
