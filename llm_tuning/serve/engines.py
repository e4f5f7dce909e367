"""Inference engines behind the OpenAI-compatible server: requests in, text pieces out, batched.

Both engines take token ids (the prompt the template built) and `GenerationSettings`, and yield
`Delta`s (choice index, new text, finish reason) asynchronously, so `openai_api.py` never knows
which one runs:

- `TransformersEngine` (default, CPU or GPU): one worker thread owns the model. Requests queue up;
  the worker takes the oldest waiting request and those whose prompts are nearest its length (up
  to `max_batch_size` choices), decodes them together in one left-padded batch
  (`generation.BatchDecoder`), and streams each piece back to its request's event loop. Requests
  arriving while a batch runs wait for the next batch.
- `VllmEngine` (GPU, `pip install vllm`): vLLM's own continuous batching and paged KV cache, with
  the LoRA adapter applied per request (`enable_lora`).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..cli import UserError
from ..generation import BatchDecoder, Delta, GenerationSettings


def choice_settings(settings: GenerationSettings, n: int) -> list[GenerationSettings]:
    """Settings of each of `n` choices: with a seed, choice i samples with seed + i, so the choices
    differ from each other and a request's answer never depends on what it was batched with."""
    if settings.seed is None:
        return [settings] * n
    return [replace(settings, seed=settings.seed + i) for i in range(n)]


@dataclass
class _Job:
    prompt_ids: list[int]
    settings: list[GenerationSettings]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, item: Delta | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


def pick_batch(pending: list, max_rows: int) -> list:
    """Take the next batch out of `pending` (jobs oldest first): the oldest job, so none waits
    forever, and then the jobs whose prompts are nearest its length, up to `max_rows` choices.
    Rows of similar length pad little, and a padded position costs as much as a real one."""
    first = pending[0]
    rows = len(first.settings)
    batch = [first]
    for job in sorted(pending[1:], key=lambda job: abs(len(job.prompt_ids) - len(first.prompt_ids))):
        if rows + len(job.settings) <= max_rows:
            batch.append(job)
            rows += len(job.settings)
    taken = {id(job) for job in batch}
    pending[:] = [job for job in pending if id(job) not in taken]
    return batch


class TransformersEngine:
    """Queue + batching worker over a transformers model (optionally with peft adapters)."""

    backend = "transformers"

    def __init__(self, model, tokenizer, max_batch_size: int = 16, batch_wait_s: float = 0.01):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_sizes: list[int] = []  # choices decoded together, per batch (for logs and tests)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._worker.start()

    async def generate(self, prompt_ids: list[int], settings: GenerationSettings, n: int = 1) -> AsyncIterator[Delta]:
        """Queue a request; yield its pieces (Delta.row is the choice index) until every choice ends."""
        job = _Job(list(prompt_ids), choice_settings(settings, n), asyncio.get_running_loop())
        self._queue.put(job)
        finished = 0
        try:
            while finished < n:
                item = await job.events.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    finished += 1
                yield item
        finally:
            job.cancelled = True  # the client went away, or we are done: free its rows

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    # --- the worker thread ---

    def _collect(self, pending: list[_Job]) -> bool:
        """Wait up to batch_wait_s for a full batch, then take everything else already waiting, so
        that the batch can be chosen by prompt length; True once close() was called."""
        deadline = time.monotonic() + self.batch_wait_s
        while sum(len(job.settings) for job in pending) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return True
            pending.append(job)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            pending.append(job)

    def _run(self) -> None:
        pending: list[_Job] = []  # arrived and not decoded yet, oldest first
        closing = False
        while not closing or pending:
            if not pending:
                job = self._queue.get()
                if job is None:
                    return
                pending.append(job)
            if not closing:
                closing = self._collect(pending)
            jobs = pick_batch(pending, self.max_batch_size)
            jobs = [job for job in jobs if not job.cancelled]
            if jobs:
                self._decode(jobs)

    def _decode(self, jobs: list[_Job]) -> None:
        owners = [(job, choice) for job in jobs for choice in range(len(job.settings))]
        self.batch_sizes.append(len(owners))
        try:
            decoder = BatchDecoder(self.model, self.tokenizer, [job.prompt_ids for job, _ in owners],
                                   [s for job in jobs for s in job.settings])
            for deltas in decoder:
                for delta in deltas:
                    job, choice = owners[delta.row]
                    job.emit(replace(delta, row=choice))
                for row, (job, _) in enumerate(owners):
                    if job.cancelled and not decoder.done[row]:
                        decoder.cancel(row)
        except Exception as err:  # a failed batch fails its requests, not the server
            for job in jobs:
                job.emit(err)


class VllmEngine:
    """vLLM's AsyncLLMEngine with the same `generate` as TransformersEngine (GPU only)."""

    backend = "vllm"

    def __init__(self, base_model: str, adapter: str | None = None, *, dtype: str = "auto",
                 trust_remote_code: bool = False, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, max_lora_rank: int = 64):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm.lora.request import LoRARequest
        except ImportError as err:
            raise UserError(
                f"--backend vllm needs vLLM and an NVIDIA GPU (pip install vllm; it cannot run on CPU "
                f"here): {err}; use --backend transformers on this machine"
            ) from None
        import torch

        if not torch.cuda.is_available():
            raise UserError("--backend vllm needs an NVIDIA GPU (CUDA is not available); use --backend transformers")
        args = AsyncEngineArgs(model=base_model, tokenizer=adapter or base_model, dtype=dtype,
                               trust_remote_code=trust_remote_code, max_model_len=max_model_len,
                               gpu_memory_utilization=gpu_memory_utilization,
                               tensor_parallel_size=tensor_parallel_size, enable_lora=adapter is not None,
                               max_lora_rank=max_lora_rank)
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.max_model_len = max_model_len or self.engine.model_config.max_model_len
        self.lora_request = LoRARequest("adapter", 1, str(Path(adapter).resolve())) if adapter else None
        self._ids = itertools.count()

    async def generate(self, prompt_ids: list[int], settings: GenerationSettings, n: int = 1) -> AsyncIterator[Delta]:
        params = _vllm_sampling_params(settings, n)
        request_id = f"req-{next(self._ids)}"
        sent = [0] * n
        async for output in self.engine.generate({"prompt_token_ids": list(prompt_ids)}, params, request_id,
                                                 lora_request=self.lora_request):
            for completion in output.outputs:  # cumulative: send what is new
                text = completion.text
                reason = completion.finish_reason
                if len(text) > sent[completion.index] or reason is not None:
                    piece = text[sent[completion.index]:]
                    sent[completion.index] = len(text)
                    finish = None if reason is None else ("length" if reason == "length" else "stop")
                    yield Delta(completion.index, piece, finish, len(completion.token_ids))

    def close(self) -> None:
        if hasattr(self.engine, "shutdown_background_loop"):
            self.engine.shutdown_background_loop()


def _vllm_sampling_params(settings: GenerationSettings, n: int):
    from vllm import SamplingParams

    return SamplingParams(
        n=n, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or -1,
        max_tokens=settings.max_new_tokens, stop=list(settings.stop), stop_token_ids=list(settings.stop_token_ids),
        frequency_penalty=settings.frequency_penalty, presence_penalty=settings.presence_penalty,
        repetition_penalty=settings.repetition_penalty, seed=settings.seed,
    )
