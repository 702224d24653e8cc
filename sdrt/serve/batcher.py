"""One bounded queue, one worker: requests that can share a U-Net call are joined into one pipeline run.

Jobs are compatible when they differ only in prompts and seeds (same mode, size, steps, sampler, guidance): each
image keeps its own seed's generator (``Pipeline(seed=[...])``), so a joined image is the image it would be alone.
The blocking pipeline call runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The queue holds as many requests as it may: answer 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request's work: ``images`` images whose prompts, negative prompts and seeds are listed per image."""
    key: tuple | None  # compatibility key: jobs with the same key may share a run; None runs alone
    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    params: dict[str, Any]  # the pipeline arguments the images share
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    cancelled: bool = False
    future: asyncio.Future | None = None

    @property
    def images(self) -> int:
        return len(self.seeds)


RunBatch = Callable[[list[Job]], list[Any]]  # blocking: one result per job, in order


class Batcher:
    def __init__(self, run: RunBatch, max_batch: int = 4, max_queue: int = 64,
                 on_batch: Callable[[list[Job]], None] | None = None):
        self.run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self.on_batch = on_batch  # told of every batch before it runs (metrics, progress)
        self.pending: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdrt-batch")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self.pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job; its future resolves to the job's result (or raises the run's error)."""
        if len(self.pending) >= self.max_queue:
            raise QueueFull(f"{len(self.pending)} requests are waiting already")
        job.future = asyncio.get_running_loop().create_future()
        self.pending.append(job)
        self._wake.set()
        return job.future

    def cancel(self, job: Job) -> None:
        """The job's client is gone: a queued job leaves the queue now (its place is free); a running one is
        stopped at its next step when no other client waits on its batch (``Service.run_batch``)."""
        job.cancelled = True
        if job in self.pending:
            self.pending.remove(job)

    def _take(self) -> list[Job]:
        """The oldest job, and the compatible ones behind it, up to ``max_batch`` images (a cancelled job is dropped)."""
        first = self.pending.popleft()
        batch, images = [first], first.images
        if first.key is not None:
            for job in list(self.pending):
                if job.key == first.key and images + job.images <= self.max_batch:
                    self.pending.remove(job)
                    batch.append(job)
                    images += job.images
        return [j for j in batch if not j.cancelled and not j.future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            if not batch:
                continue
            now = time.perf_counter()
            for job in batch:
                job.started = now
            if self.on_batch:
                self.on_batch(batch)
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as e:  # the run failed (or was stopped): every job still waited on gets the error
                for job in batch:
                    if job.cancelled:
                        job.future.cancel()
                    elif not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)
