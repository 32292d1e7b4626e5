"""SIGTERM (TPU maintenance / preemption) -> save a checkpoint at a step boundary and exit 0.

One process: a Python SIGTERM handler sets a flag that the loop reads after each step.
Several processes: every host must save the same step, so the decision comes from
JAX's preemption sync manager (started by `jax.distributed.initialize`, which watches
SIGTERM itself and agrees on one step across hosts). A signal to any one host is enough:
the coordination service tells the others, and every host stops at the step after the
furthest one any host had reached, so none waits in a collective for a host that left
(tests/test_train_multi.py signals both hosts, then only one).
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self._flag.set()

    def should_stop(self, step: int) -> bool:
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
