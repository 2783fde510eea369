"""A pool of worker processes for per-video work (decoding): sized by cores and memory, tied to its parent, and
surviving a worker that crashes.

Workers are forked (the parent's imports and settings carry over) and end when the parent dies, even by kill -9. A
worker that dies (a segfault in a decoder) breaks the pool: the tasks it was running are retried one by one, each in
a process of its own, so that the crash is pinned on the task that causes it and no other task is lost.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

logger = logging.getLogger(__name__)

_MP_CONTEXT = multiprocessing.get_context("fork")


# --------------------------------------------------------------------------------------------------------------------
# Resources


# Peak RSS of one decoding worker on 4K sources after chunked resizing (1.0-1.8 GiB measured by
# benchmarks/decode_memory.py); used only to size the default worker count.
WORKER_MEMORY_BYTES = 2 * 2**30


def _proc_kib(path: str, key: str) -> int | None:
    """Bytes of a ``key: N kB`` line of a Linux /proc file, None where there is none."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux ``MemAvailable``), None when unknown."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def default_num_workers(cpus: int | None = None, memory: int | None = None) -> int:
    """At most 8 workers, one per core, and no more than the available memory holds at :data:`WORKER_MEMORY_BYTES`."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    memory = memory if memory is not None else available_memory()
    by_memory = memory // WORKER_MEMORY_BYTES if memory is not None else 8
    return max(1, min(8, cpus, by_memory))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux: ``VmHWM``, which, unlike ``ru_maxrss``, does not carry
    over the parent's peak into a forked or exec'd child)."""
    peak = _proc_kib("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------------------------------------------------
# Workers


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker end when the process that started it dies (even by kill -9), instead of idling on."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent exits
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch():  # portable fallback: once re-parented, the parent is gone
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def worker_init(parent_pid: int | None = None):
    """Set up a worker: it ends with its parent, leaves Ctrl-C to it, and computes on one thread."""
    import torch

    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    # Ctrl-C is the parent's to handle (it stops the run, and these workers end with it): no traceback per worker.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from the processes; threads inside each would only fight over the cores.
    torch.set_num_threads(1)


def run_isolated(work: Callable, task, run_args: tuple) -> dict:
    """``work(task, *run_args)`` in a process of its own, so that a crash (a segfault in a decoder) is pinned on the
    task that caused it."""
    with ProcessPoolExecutor(
        max_workers=1, mp_context=_MP_CONTEXT, initializer=worker_init, initargs=(os.getpid(),)
    ) as pool:
        try:
            return pool.submit(work, task, *run_args).result()
        except BrokenProcessPool:
            return {
                "type": "failure",
                "video_id": task.video_id,
                "source": task.source,
                "reason": "the decoder crashed the worker process (e.g. a segfault in decord)",
            }


def run_parallel(work: Callable, tasks: list, run_args: tuple, num_workers: int):
    """Yield ``work(task, *run_args)`` for every task, ``num_workers`` processes at a time; a crashed worker's tasks
    are run again one by one (:func:`run_isolated`)."""
    queue = list(reversed(tasks))
    while queue:
        pool = ProcessPoolExecutor(
            max_workers=num_workers, mp_context=_MP_CONTEXT, initializer=worker_init, initargs=(os.getpid(),)
        )
        running: dict = {}
        crashed: list = []
        try:
            while queue or running:
                while queue and len(running) < num_workers:
                    task = queue.pop()
                    running[pool.submit(work, task, *run_args)] = task
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        crashed.append(task)
                if crashed:
                    crashed.extend(running.values())
                    running.clear()
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if crashed:
            logger.warning("a worker process died; retrying %d in-flight video(s) one by one", len(crashed))
            for task in crashed:
                yield run_isolated(work, task, run_args)
