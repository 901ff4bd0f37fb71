# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run work on a bounded pool of threads: in any order, or in the order a scheduler decides.

The work here is waiting on skopeo processes, on the network or on hashlib and file I/O, all of
which release the GIL, so threads are enough.
"""

from __future__ import annotations

import concurrent.futures


def run_parallel(items, parallel, work):
    """``[work(item) for item in items]`` on up to ``parallel`` threads, results in order.

    The first exception raised by ``work`` is raised again once the running calls have ended;
    no further item starts after it.
    """
    items = list(items)
    if parallel <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    results = [None] * len(items)
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        futures = dict((pool.submit(_guarded, work, item, errors), index) for index, item in enumerate(items))
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    if errors:
        raise errors[0]
    return results


def _guarded(work, item, errors):
    if errors:
        return None
    try:
        return work(item)
    except Exception as exc:  # pylint: disable=broad-except
        errors.append(exc)
        return None


def run_scheduled(scheduler, parallel, work, should_stop=lambda: False):
    """Run ``work(name)`` for what ``scheduler`` hands out, on up to ``parallel`` threads.

    ``scheduler`` has ``pending`` (a list), ``next_ready()`` (a name, or None while everything
    pending waits for running work), ``start(name)`` and ``finish(name, ok)``; ``work`` returns
    whether it succeeded. Once ``should_stop()`` is true nothing new starts. Returns the names
    never started; an exception of ``work`` is raised again after the running calls end.
    """
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        running = {}
        while True:
            while not errors and not should_stop() and len(running) < parallel and scheduler.pending:
                name = scheduler.next_ready()
                if name is None:
                    break
                scheduler.start(name)
                running[pool.submit(work, name)] = name
            if not running:
                break
            done, dummy = concurrent.futures.wait(list(running), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    ok = bool(future.result())
                except Exception as exc:  # pylint: disable=broad-except
                    errors.append(exc)
                    ok = False
                scheduler.finish(name, ok)
    if errors:
        raise errors[0]
    return list(scheduler.pending)
