"""nbval on a busy machine (``pytest --nbval-lax notebooks/...``, the last step of ``make test``).

nbval waits for a cell's reply on the shell channel before it reads any of the cell's output
messages on the IOPub channel. Meanwhile those messages queue up in ZeroMQ, whose queues hold
1,000 messages each (the high-water mark) and then *drop* what comes next. A training cell's
progress bars send a few widget messages per refresh; on a loaded machine the cell runs longer,
so it refreshes more often and the queues overflow: the cell's final "idle" message is lost,
and nbval fails the cell with "Timeout of 5 seconds exceeded waiting for output" (and stops the
kernel) although the cell ran correctly. Waiting longer does not help: the message is gone.

So nbval's kernel client here receives IOPub without a high-water mark (nothing is dropped), and
waits up to ``SEGCOURSE_NBVAL_OUTPUT_TIMEOUT`` seconds (default 60, nbval's is 5) between two
output messages once a cell has replied. Nothing checked is weakened: every output is still
read and compared, and ``--nbval-cell-timeout`` still bounds how long a cell may run.
"""

from __future__ import annotations

import os

import zmq

OUTPUT_TIMEOUT = float(os.environ.get("SEGCOURSE_NBVAL_OUTPUT_TIMEOUT", "60"))

try:
    import nbval.kernel as _nbval_kernel
except ImportError:  # nbval is a dev dependency; without it these hooks have nothing to do
    _nbval_kernel = None

if _nbval_kernel is not None:
    _CONTEXT = zmq.Context()
    _CONTEXT.setsockopt(zmq.RCVHWM, 0)  # 0 = no limit: sockets made from now on drop nothing

    class _LosslessKernelManager(_nbval_kernel.KernelManager):
        def client(self, **kwargs):
            kwargs.setdefault("context", _CONTEXT)
            return super().client(**kwargs)

    _nbval_kernel.KernelManager = _LosslessKernelManager


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's IPyNbCell
            item.output_timeout = max(item.output_timeout, OUTPUT_TIMEOUT)
