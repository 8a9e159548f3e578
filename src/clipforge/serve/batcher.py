"""Concurrent text queries answered by one forward pass.

Requests put their query on a list and wait; a worker drains the list, embeds everything that is waiting
as one batch in its own thread, searches the index for the whole batch at once, and hands each request its
answer. No request ever waits for a timer: while a batch runs, newcomers gather for the next one, so batches
grow exactly as fast as load does. With ``workers=2`` a second batch may run while the first one does (ONNX
Runtime and torch release the GIL), which on two cores cut the queueing delay and raised throughput by ~40%
(benchmarks/results/serve.json). A small LRU cache keeps the embeddings of repeated queries.

The worker task lives in whatever event loop the requests come from and ends when the list is empty, so the
batcher works under uvicorn and under a TestClient that opens a fresh loop per request alike.
"""
from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor


class LRU:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class BatchRunner:
    """``await runner.submit(item)`` -> ``fn([items...])[i]``, with items of concurrent callers batched."""

    def __init__(self, fn, max_batch: int = 64, name: str = "clipforge-batch", workers: int = 1):
        self.fn, self.max_batch, self.workers = fn, max_batch, max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.tasks: set[asyncio.Task] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((item, fut))
        self.tasks = {t for t in self.tasks if not t.done()}
        if len(self.tasks) < self.workers:
            self.tasks.add(loop.create_task(self._drain()))
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            batch = [(x, f) for x, f in batch if not f.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self.fn, [x for x, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, f), r in zip(batch, results):
                if not f.done():
                    f.set_result(r)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
