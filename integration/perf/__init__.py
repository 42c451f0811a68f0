"""The perf suite: keyspan beside the limits of the parts it is built on.

Every figure is reported as a ratio to a limit measured in the same run on the same disk
(raw apsw, a bare grpc.aio echo server driven by the same client harness), because the
machine is shared and absolute numbers are noisy. Run it as ``python -m
integration.perf.bench --help`` or ``keyspan bench --help``; README "## Performance"
explains the table.
"""
