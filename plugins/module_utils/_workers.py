# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run work on a bounded pool of threads: in any order, or in the order a scheduler decides.

The work here is waiting on skopeo processes, on the network or on hashlib and file I/O, all of
which release the GIL, so threads are enough. :class:`Scheduler` is the part the download and the
upload share: work that needs blobs, and two pieces of work that still need the same blob never
running at the same time (the first one moves it, the later ones find it there).
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


class Scheduler:
    """Which work to start next so that every blob is moved once. Pure: no threads.

    Each piece of work (a name) needs blobs (``{digest: size}``); ``done`` holds the blobs already
    in place. A pending name is ready when none of the blobs it still misses is held by running
    work; among the ready ones, :meth:`choose` (each subclass's policy) picks one. Work can be
    added while other work runs (:meth:`add`). A success puts the blobs it held in ``done``; a
    failure frees them for the next one that needs them.
    """

    def __init__(self, needs=None, done=None):
        self.needs = {}
        self.position = {}
        self.pending = []
        self.running = {}
        self.done = set(done or ())
        for name, blobs in (needs or {}).items():
            self.add(name, blobs)

    def add(self, name, blobs):
        """Queue ``name``, which needs ``blobs`` (``{digest: size}``)."""
        self.needs[name] = dict(blobs)
        self.position[name] = len(self.position)
        self.pending.append(name)

    def missing(self, name):
        """The blobs ``name`` still needs: ``{digest: size}``."""
        return dict((blob, size) for blob, size in self.needs[name].items() if blob not in self.done)

    def in_flight(self):
        busy = set()
        for blobs in self.running.values():
            busy |= blobs
        return busy

    def choose(self, ready, missing):
        """The name to start among ``ready``; ``missing`` maps every pending name to what it still needs."""
        raise NotImplementedError

    def next_ready(self):
        """The name to start now, or None while every pending one waits for a blob in flight."""
        busy = self.in_flight()
        missing = dict((name, self.missing(name)) for name in self.pending)
        ready = [name for name in self.pending if not busy.intersection(missing[name])]
        return self.choose(ready, missing) if ready else None

    def start(self, name):
        self.pending.remove(name)
        self.running[name] = set(self.missing(name))

    def finish(self, name, success=True):
        blobs = self.running.pop(name)
        if success:
            self.done |= blobs

    def cancel_pending(self):
        cancelled, self.pending = self.pending, []
        return cancelled


def run_scheduled(scheduler, parallel, work, should_stop=lambda: False):
    """Run ``work(name)`` for what ``scheduler`` hands out, on up to ``parallel`` threads.

    ``scheduler`` is a :class:`Scheduler`; ``work`` returns
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
