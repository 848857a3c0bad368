"""Worker processes that end with the qsmprep process that started them.

Nipype's MultiProc runs nodes in a ``ProcessPoolExecutor`` whose workers are forked by a
``forkserver``.  When the main process is killed (``kill -9``, a scheduler's time limit on a
login node, an OOM kill), nothing tells the workers, and they (and the forkserver and the
resource tracker) linger for minutes holding memory.  :class:`MultiProcPlugin` gives every worker
two guards, installed by the pool's initializer:

* ``PR_SET_PDEATHSIG`` (Linux): the kernel sends SIGKILL to the worker when its parent (the
  forkserver, which exits as soon as the main process is gone) dies;
* a watchdog thread that ends the worker within :data:`WATCH_INTERVAL_S` once the main process is
  gone or the worker has been re-parented (any platform).
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: How often a worker's watchdog checks that the main process is alive (s).
WATCH_INTERVAL_S = 0.5


def _set_parent_death_signal() -> None:
    """Ask the kernel for SIGKILL when this process's parent dies (Linux only; silent elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def watch_main_process(main_pid: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) once ``main_pid`` is gone or this
    process's parent changed (it was re-parented: its parent died)."""
    parent = os.getppid()

    def _watch():
        while True:
            time.sleep(interval)
            if not _alive(main_pid) or os.getppid() != parent:
                os._exit(1)

    thread = threading.Thread(target=_watch, name="qsmprep-watchdog", daemon=True)
    thread.start()
    return thread


def worker_initializer(cwd: str, main_pid: int) -> None:
    """Pool initializer: Nipype's own (working folder, no telemetry), then the two guards."""
    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
    _set_parent_death_signal()
    watch_main_process(main_pid)


def multiproc_plugin(plugin_args: dict):
    """A Nipype ``MultiProcPlugin`` whose workers end with this process (see the module docstring)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    plugin = MultiProcPlugin(plugin_args=plugin_args)
    plugin.pool.shutdown(wait=False)  # no worker has started yet: replace the pool
    plugin.pool = ProcessPoolExecutor(max_workers=plugin.processors, initializer=worker_initializer,
                                      initargs=(plugin._cwd, os.getpid()),
                                      mp_context=mp.get_context(plugin.plugin_args.get("mp_context")))
    return plugin
