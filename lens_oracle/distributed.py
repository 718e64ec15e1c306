"""Data-parallel oracle training over several processes, launched with ``torchrun``.

Every process (a *rank*) holds the whole model and its own copy of the adapter. Each global
batch is split across the ranks, every rank runs its share, the trainable gradients are summed
over the ranks, and every rank takes the same optimiser step, so the adapters stay identical.
The backend is NCCL on GPUs and gloo on CPUs.

Running it
----------
The ``lens-oracle train`` command is ready for ``torchrun`` (see :mod:`lens_oracle.train_cli`).
One machine with 4 GPUs, one process per GPU::

    torchrun --standalone --nproc_per_node 4 -m lens_oracle train \\
        --model path/to/Qwen3-8B --data mix.jsonl --out runs/oracle --batch-size 16

Several machines: start the identical command on every node, with the node count and one
rendezvous address that all nodes reach (a free port on any one of them) and a job id::

    torchrun --nnodes 2 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint node0.example:29500 --rdzv_id oracle-run-1 \\
        -m lens_oracle train --model /shared/Qwen3-8B --data /shared/mix.jsonl --out /shared/runs/oracle

(Without the c10d rendezvous: ``--nnodes 2 --node_rank K --master_addr node0.example
--master_port 29500`` with K = 0, 1 on the two nodes.)

The model, data and checkpoint folders must be readable by every node at the same paths
(a shared filesystem, or identical copies); only rank 0 writes the oracle and checkpoints, and
``--resume`` needs the checkpoint folder on a filesystem that every node sees. On CPUs
(``--nproc_per_node 2`` runs two gloo processes) set ``OMP_NUM_THREADS`` to cores per process.

The same from Python, as a script run with ``torchrun ... my_script.py`` (it also runs on its
own as a single process)::

    from lens_oracle.distributed import init_distributed

    ctx = init_distributed()                 # reads RANK, WORLD_SIZE, LOCAL_RANK from torchrun
    torch.manual_seed(0)
    oracle = ActivationOracle.create("path/to/model", device=ctx.device)
    train_oracle(oracle, examples, TrainConfig(batch_size=16))    # finds ctx by itself
    if ctx.is_main:
        oracle.save("runs/oracle")
    ctx.close()

What is guaranteed
------------------
* ``TrainConfig.batch_size`` is the **global** batch: each of N ranks processes
  ``batch_size / N`` examples per micro-batch, so a run gives the same update whatever N is.
  A batch size that N does not divide is refused (:class:`ConfigError`) before any work.
* The loss of a global batch is the mean over all of its answer tokens, exactly as in one
  process: each rank scales its token-mean by its share of the batch's answer tokens (one
  all-reduce of a count), and gradients are summed. With ``grad_accum_steps`` each micro-batch
  keeps the single-process weight ``len(batch) / examples in the step``.
* Gradients are summed with one bucketed all-reduce per optimiser step, after all micro-batches
  (no ``no_sync`` juggling, no ``find_unused_parameters``). We do not wrap the model in
  ``torch.nn.parallel.DistributedDataParallel``: its reducer needs every forward to go through
  the wrapper, while our forwards run through the bridge's hooks and the target pass runs on the
  same weights with the adapter off. Only the adapter (and projector) weights are reduced, a few
  percent of the model, so overlapping the reduction with the backward pass would gain little.
  A rank whose share of a short last batch is empty still joins every reduction.
* Rank 0's trainable weights are broadcast at start; every rank checks that it has the same
  batches in the same order (a fingerprint), and on resume that it restarts at the same step.
  Mismatches raise on every rank instead of hanging or training on different data.
* Only rank 0 shows progress, writes checkpoints and runs the evaluation callback (the other
  ranks wait for it at the next step: keep evaluations shorter than ``timeout_s``).
* LoRA dropout draws different masks than a single process would (the examples sit in other
  batch positions); runs with dropout are equivalent in distribution, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
import torch.distributed as dist
from einops import pack, unpack

from lens_oracle.config import TrainConfig
from lens_oracle.errors import ConfigError, DataError, TrainingError
from lens_oracle.oracle import ActivationOracle, OracleBatch
from lens_oracle.prompt import IGNORE_INDEX
from lens_oracle.train import (
    Batch,
    EvalCallback,
    Trainer,
    TrainResult,
    VectorReader,
    clip_gradients,
    encode_examples,
)

log = logging.getLogger(__name__)

Backend = Literal["auto", "gloo", "nccl"]
BUCKET_BYTES = 64 << 20
"""Gradients are summed in float32 buckets of at most this many bytes."""

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a ``torchrun`` job (``world_size == 1``: a single process)."""

    rank: int
    """Global rank, 0 .. world_size - 1."""
    world_size: int
    """Number of processes over all nodes."""
    local_rank: int
    """Rank on this node: the index of the GPU this process uses."""
    device: torch.device
    """Where this rank should put its model (``cuda:{local_rank}`` or ``cpu``)."""
    backend: str = "none"
    """``nccl``, ``gloo``, or ``none`` for a single process."""
    owns_group: bool = False
    """Whether :func:`init_distributed` created the process group (:meth:`close` ends it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This rank's share of a global batch: every ``world_size``-th item from ``rank``.

        Length-grouped batches are sorted longest first, so striding gives every rank a similar
        amount of padding and work.
        """
        return list(batch[self.rank :: self.world_size])

    def close(self) -> None:
        """End the process group if :func:`init_distributed` started it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def single_process(device: str | torch.device | None = None) -> DistributedContext:
    """A context for one process; ``train_oracle(..., distributed=single_process())`` trains
    alone even inside a ``torchrun`` job."""
    return DistributedContext(0, 1, 0, torch.device(device) if device is not None else _default_device(0))


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def init_distributed(backend: Backend = "auto", *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the ``torchrun`` job this process was started in (or stand alone without one).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and torchrun's rendezvous variables), picks
    NCCL when CUDA is available and gloo otherwise, binds this rank to ``cuda:{LOCAL_RANK}``, and
    returns the context. Without ``WORLD_SIZE`` (a plain ``python`` run) it returns a
    single-process context and starts nothing. An already initialised group is reused.

    Raises:
        ConfigError: NCCL without CUDA, more local ranks than GPUs, or malformed variables.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if dist.is_available() and dist.is_initialized():
        context = current_context()
        return context if context is not None else single_process()
    if "WORLD_SIZE" not in os.environ:
        return single_process()
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; launch with torchrun")
    if world == 1:
        return single_process()
    chosen = backend if backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("the NCCL backend needs CUDA GPUs; on CPUs use backend='gloo'")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = _default_device(local_rank)
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; install one that does")
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {"device_id": device} if chosen == "nccl" else {}
    dist.init_process_group(chosen, rank=rank, world_size=world, timeout=timeout, **kwargs)
    log.info("rank %d of %d joined (%s on %s)", rank, world, chosen, device)
    return DistributedContext(rank, world, local_rank, device, chosen, owns_group=True)


def current_context() -> DistributedContext | None:
    """The running process group as a context, or ``None`` when this is a single process.

    Raises:
        ConfigError: ``torchrun`` started several processes but nobody initialised the group
            (every process would otherwise train the whole run on its own).
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world == 1:
            return None
        backend = str(dist.get_backend())
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else _default_device(local_rank)
        return DistributedContext(dist.get_rank(), world, local_rank, device, backend)
    if "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1:
        raise ConfigError(
            f"this process runs under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) but "
            "torch.distributed is not initialised; call lens_oracle.distributed.init_distributed() "
            "before creating the oracle (or pass distributed=single_process() to train alone)"
        )
    return None


# ---------------------------------------------------------------- collectives


def all_agree(context: DistributedContext, value: int) -> bool:
    """Whether every rank passed the same integer (one all-reduce of [v, -v] with MAX)."""
    pair = torch.tensor([value, -value], dtype=torch.int64, device=context.comm_device)
    dist.all_reduce(pair, op=dist.ReduceOp.MAX)
    return int(pair[0]) == -int(pair[1])


def sum_over_ranks(context: DistributedContext, value: int) -> int:
    """The sum of an integer over all ranks."""
    if not context.active:
        return value
    total = torch.tensor([value], dtype=torch.int64, device=context.comm_device)
    dist.all_reduce(total)
    return int(total)


def broadcast_parameters(params: Sequence[torch.nn.Parameter], context: DistributedContext) -> None:
    """Copy rank 0's values of ``params`` to every rank."""
    if not context.active:
        return
    with torch.no_grad():
        for param in params:
            buffer = param.detach().to(context.comm_device).contiguous()
            dist.broadcast(buffer, src=0)
            param.copy_(buffer.to(param.device))


def _buckets(params: Sequence[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Consecutive groups of at most :data:`BUCKET_BYTES` (as float32); never empty."""
    buckets: list[list[torch.nn.Parameter]] = [[]]
    size = 0
    for param in params:
        if buckets[-1] and size + 4 * param.numel() > BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(param)
        size += 4 * param.numel()
    return buckets


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], context: DistributedContext, extra: float = 0.0) -> float:
    """Sum the gradients of ``params`` over all ranks, in place; returns ``extra`` summed too.

    A parameter with no gradient on any rank keeps ``grad = None`` (as in one process, so AdamW
    skips it); one with a gradient on some ranks gets the sum, with zeros for the others.
    """
    if not context.active:
        return extra
    device = context.comm_device
    total = extra
    for index, bucket in enumerate(_buckets(params)):
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().to(device) for p in bucket]
        flags = [float(p.grad is not None) for p in bucket] + ([extra] if index == 0 else [])
        # one buffer per bucket: every gradient flattened, then the flags (and the extra value)
        flat, shapes = pack([*grads, torch.tensor(flags, dtype=torch.float32, device=device)], "*")
        dist.all_reduce(flat)
        *summed, flags_summed = unpack(flat, shapes, "*")
        seen = flags_summed[: len(bucket)].tolist()
        if index == 0:
            total = float(flags_summed[len(bucket)])
        for param, grad, has_grad in zip(bucket, summed, seen, strict=True):
            param.grad = grad.to(param.device, param.dtype).clone() if has_grad > 0 else None
    return total


def batches_fingerprint(batches: Sequence[Batch]) -> int:
    """A 56-bit digest of the batches' examples (inputs, question, answer) and their order."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(b"|")
        for ex in batch:
            digest.update(repr((ex.context_ids, ex.positions, ex.read_layers, ex.question, ex.answer)).encode())
    return int.from_bytes(digest.digest()[:7], "little")


def answer_tokens(batch: OracleBatch) -> int:
    """Answer tokens that the oracle's loss averages over (labels after the one-token shift)."""
    if batch.labels is None:
        return 0
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- the trainer


class DistributedTrainer(Trainer):
    """A :class:`~lens_oracle.train.Trainer` whose steps are shared by all ranks of a job.

    ``config.batch_size`` is the global batch; see the module docstring for the guarantees.
    """

    def __init__(
        self,
        oracle: ActivationOracle,
        config: TrainConfig,
        context: DistributedContext,
        *,
        on_eval: EvalCallback | None = None,
        reader: VectorReader | None = None,
    ) -> None:
        """``on_eval`` runs on rank 0 only; ``reader`` runs on every rank, on its share."""
        if config.batch_size % context.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                f"{context.world_size} processes (each takes batch_size / world size); use a "
                f"multiple of {context.world_size}"
            )
        if not context.is_main:
            config = dataclasses.replace(config, progress=False)
        super().__init__(oracle, config, on_eval=on_eval if context.is_main else None, reader=reader)
        self.context = context
        self._step_checked = False
        broadcast_parameters(self.params, context)

    def fit(
        self,
        batches: Sequence[Batch],
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """As :meth:`Trainer.fit`; every rank must pass the same batches in the same order."""
        if self.context.active and not all_agree(self.context, batches_fingerprint(batches)):
            raise DataError(
                "the processes of this job have different training batches; build the examples "
                "deterministically (same files, same seed) on every rank"
            )
        return super().fit(batches, checkpoint_dir=checkpoint_dir, resume=resume)

    def _checkpoint(self, folder: Path, step: int, scheduler: object, result: TrainResult) -> None:
        if self.context.is_main:
            super()._checkpoint(folder, step, scheduler, result)

    def _step(self, group: Sequence[Batch], step: int) -> float:
        context = self.context
        if not self._step_checked:
            self._step_checked = True
            if context.active and not all_agree(context, step):
                raise TrainingError(
                    f"the processes start at different steps (this one at {step}); resume needs "
                    "the checkpoint folder on a filesystem that every node sees"
                )
        self.optimizer.zero_grad(set_to_none=True)
        n_examples = sum(len(b) for b in group)
        local = sum(self._backward(context.shard(batch), len(batch) / n_examples) for batch in group)
        total = all_reduce_gradients(self.params, context, local)
        if not math.isfinite(total):
            raise TrainingError(f"the loss became {total} at step {step}; lower the learning rate")
        clip_gradients(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self._check_weights(step)  # every rank holds the same weights: all stop together
        return total

    def _backward(self, share: Batch, weight: float) -> float:
        """Backward of this rank's part of one micro-batch's loss; returns the part's value."""
        encoded = encode_examples(self.oracle, share, self.reader) if share else None
        local_tokens = answer_tokens(encoded) if encoded is not None else 0
        tokens = sum_over_ranks(self.context, local_tokens)
        if encoded is None or not local_tokens:
            return 0.0
        loss = self.oracle.loss(encoded) * (weight * local_tokens / tokens)
        loss.backward()
        return float(loss.detach())
