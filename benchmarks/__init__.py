"""Benchmarks of pyserving against an in-process limit and a hand-written FastAPI server.

Run everything with ``python -m benchmarks.run`` (see ``docs/benchmarks.md``). The pieces:

- :mod:`benchmarks.models`: the workloads (``half_plus_two`` and an exported MLP) and the
  request payloads, with answers computed in NumPy to check responses.
- :mod:`benchmarks.loadgen`: the closed-loop load generator (its own process): REST over
  keep-alive HTTP/1.1 and gRPC with the official stubs; latency percentiles, errors, and the
  CPU and peak RSS of the server process read from ``/proc``.
- :mod:`benchmarks.servers`: starting and stopping the processes under test.
- :mod:`benchmarks.fastapi_server`, :mod:`benchmarks.trivial`: the FastAPI baseline server and
  the trivial endpoints that measure what the load generator itself costs.
- :mod:`benchmarks.inprocess`: the in-process limit (the model called directly).
- :mod:`benchmarks.report`: the table, the ratios against the targets and the chart.
"""
