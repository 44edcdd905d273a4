r"""Training in several processes with torch.distributed: one model replica per process,
gradients averaged by :class:`~torch.nn.parallel.DistributedDataParallel` (DDP).

How a run is laid out
---------------------
``torchrun`` (or ``rnnkit train --nproc N``, which launches it) starts N processes and tells each
its place in the environment: ``RANK`` (0 … N−1 over all machines), ``WORLD_SIZE`` (N) and
``LOCAL_RANK`` (its index on this machine). :func:`session` reads these, joins the process group
— gloo on the CPU, NCCL when the run's device is CUDA (then on ``cuda:LOCAL_RANK``) — and destroys
it on the way out, also when training fails. Outside torchrun it does nothing: one process, the
code paths of a plain run.

What each process does
----------------------
* **Data.** Every process builds the same batch sources and reads its own shard of each *global*
  batch (:meth:`~rnnkit.tasks.batching.Minibatches.shard`, :meth:`~rnnkit.train.tbptt.LaneStream.shard`):
  a global batch of B examples or lanes gives each of N processes B/N of them (B must be a
  multiple of N). A process whose shard of some global batch is empty (the short last batch of a
  pass, lanes that ran out) is handed ``None`` and takes part in the update with nothing.
* **The loss.** A step function returns its loss as a mean over ``weight`` units (characters,
  tokens, sequences). With W = Σ_r w_r over the processes, process r back-propagates
  :math:`L_r \cdot w_r N / W`; DDP averages the gradients over N, so every process ends with

  .. math::
      \frac{1}{N} \sum_r \nabla\Big(L_r \frac{w_r N}{W}\Big) = \nabla \frac{\sum_r w_r L_r}{W},

  the gradient of the mean over the whole global batch — what one process computes from the
  same batch, whatever the shards' sizes. The logged loss and metrics are the same weighted
  means (:func:`combine`), so the log reads as a single process's.
* **The step inside DDP.** DDP synchronises gradients only for what runs through its own
  ``forward``; step functions call other methods of the model too (``encode``, ``step`` for
  rollouts). :func:`wrap` therefore puts the whole step function inside the wrapped module's
  forward, as PyTorch Lightning does, so whatever the step touches is synchronised. Every
  built-in task's step reaches every parameter; a model whose steps leave some without a
  gradient needs ``TrainConfig(find_unused_parameters=True)`` (DDP then searches the graph
  every step; without it DDP stops with an error naming those parameters).
* **Decisions.** Whatever could differ between processes is made common: a stop (the clock of
  ``max_time``, a callback's ``should_stop``) said by any process holds for all (:func:`agree`);
  rank 0 validates and broadcasts the metrics (:func:`broadcast`), so early stopping is decided
  from the same numbers everywhere. Every process leaves the loop after the same update, and a
  NaN loss is a NaN of the combined loss on every process at once, so all stop together and
  none waits forever for the others.
* **Writing.** Only rank 0 (:func:`is_main`) writes checkpoints, the log and the plot, prints,
  and shows the progress bar. Checkpoints hold the unwrapped model, so a run saved by N
  processes loads in one and the other way round.

Symbols: N processes (world size), r a rank, B a global batch, w_r the weight of r's shard.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Launch:
    """This process's place in a launched job, as torchrun's environment gives it."""

    rank: int  # RANK: 0 … world_size − 1 over all machines
    world_size: int  # WORLD_SIZE: processes in the job
    local_rank: int  # LOCAL_RANK: index of this process on its machine (its GPU)


def launched(environ: dict | None = None) -> Launch | None:
    """The :class:`Launch` torchrun described in the environment, or None outside torchrun."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = env.get(key)
        try:
            values[key] = int(text)
        except (TypeError, ValueError):
            raise ValueError(
                f"torch.distributed launch: the environment variable {key} must be an integer "
                f"(set by torchrun), got {text!r}"
            ) from None
    launch = Launch(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
        raise ValueError(
            f"torch.distributed launch: expected 0 ≤ RANK < WORLD_SIZE and LOCAL_RANK ≥ 0, got "
            f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}, LOCAL_RANK={launch.local_rank}"
        )
    return launch


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes, logs and prints: rank 0, or the only process."""
    return rank() == 0


@contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[torch.device]:
    """Join torchrun's process group for the block; yields the device this process trains on.

    Under torchrun: gloo for a CPU device, NCCL for CUDA (this process then uses
    ``cuda:LOCAL_RANK``); the group is destroyed when the block ends, also on an error. Outside
    torchrun, or when a group already exists (the caller owns it), it only yields ``device``.
    """
    device = torch.device(device)
    launch = launched()
    if launch is None or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    if device.type == "cuda":
        if not torch.cuda.is_available() or launch.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"torch.distributed: process LOCAL_RANK={launch.local_rank} needs cuda:{launch.local_rank}, "
                f"but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


# -- collectives: every process must call them in the same order -----------------------------------
def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (a picklable object); itself without a group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag True on every process if it is True on any: stop decisions all must share
    (a clock read on each, a callback's ``should_stop`` on one)."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    said = torch.tensor([bool(f) for f in flags], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(said, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in said.tolist())


def _comm_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather(obj: Any) -> list:
    """Every process's ``obj``, in rank order, on every process; ``[obj]`` without a group."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass
class Shard:
    """One process's contribution to a step: its loss as a mean over ``weight`` units."""

    weight: float  # units the loss averages over (0 for an empty shard)
    loss: float  # nan-free only where weight > 0
    items: int
    sequences: int
    metrics: dict[str, float]


@dataclass
class Combined:
    """The global step from all shards: weighted means, sums, and this process's loss scale."""

    loss: float  # Σ w_r L_r / Σ w_r
    items: int  # Σ items_r
    sequences: int
    metrics: dict[str, float]  # per metric, Σ w_r m_r / Σ w_r over the shards that report it
    scale: float  # multiply this process's loss by this before backward: w_r N / W (1 alone)


def combine(shard: Shard) -> Combined:
    """Gather every process's :class:`Shard` and combine them (one collective).

    A NaN or infinite loss on any shard with weight > 0 makes the combined loss non-finite on
    every process, so all of them notice divergence at the same update.
    """
    shards = gather(shard)
    W = sum(s.weight for s in shards)
    if not W > 0:
        raise ValueError(
            f"distributed step: the shards of this global batch weigh {W} in total; every global "
            f"batch must hold at least one unit (the step functions returned weights "
            f"{[s.weight for s in shards]})"
        )
    loss = sum(s.weight * s.loss for s in shards if s.weight > 0) / W
    names = list(dict.fromkeys(k for s in shards for k in s.metrics))
    metrics = {}
    for k in names:
        having = [s for s in shards if k in s.metrics and s.weight > 0]
        w = sum(s.weight for s in having)
        metrics[k] = sum(s.weight * s.metrics[k] for s in having) / w if w > 0 else math.nan
    return Combined(
        loss, sum(s.items for s in shards), sum(s.sequences for s in shards), metrics, shard.weight * len(shards) / W
    )


# -- the model -------------------------------------------------------------------------------------
class StepModule(nn.Module):
    """The step function as a module's forward, so DDP synchronises whatever the step runs.

    ``forward(batch)`` returns ``step_fn(model, batch)``; for ``batch = None`` (this process
    holds no part of the global batch) it returns a zero loss that still reaches every
    parameter, so this process joins the gradient all-reduce with zeros.
    """

    def __init__(
        self, model: nn.Module, step_fn: Callable[[nn.Module, Any], Any], empty: Callable[[Tensor], Any]
    ) -> None:
        super().__init__()
        self.model, self.step_fn, self.empty = model, step_fn, empty

    def forward(self, batch: Any) -> Any:
        if batch is None:
            zero = sum(p.reshape(-1)[:1].sum() * 0 for p in self.model.parameters() if p.requires_grad)
            return self.empty(zero)
        return self.step_fn(self.model, batch)


def wrap(
    model: nn.Module,
    step_fn: Callable[[nn.Module, Any], Any],
    empty: Callable[[Tensor], Any],
    find_unused_parameters: bool = False,
) -> nn.Module:
    """``DistributedDataParallel(StepModule(model, step_fn, empty))`` on the model's device.

    Call it on every process after the model is loaded: DDP copies rank 0's parameters and
    buffers to the others here. ``empty(zero_loss)`` builds the step result of an empty shard;
    ``find_unused_parameters`` is DDP's, for steps that leave parameters without gradients.
    """
    from torch.nn.parallel import DistributedDataParallel

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(
        StepModule(model, step_fn, empty), device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def shard_sizes(n: int, parts: int) -> list[int]:
    """How :func:`torch.tensor_split` cuts n items into ``parts``: sizes differing by at most 1."""
    return [n // parts + (1 if r < n % parts else 0) for r in range(parts)]


def check_divisible(batch_size: int, num_replicas: int, rank: int, owner: str) -> None:
    """Refuse a global batch that N processes cannot share equally, or a rank outside 0 … N−1."""
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"{owner}: num_replicas must be an int ≥ 1, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"{owner}: rank must be an int in [0, {num_replicas - 1}], got {rank!r}")
    if batch_size % num_replicas:
        raise ValueError(
            f"{owner}: the global batch_size {batch_size} is not divisible by the {num_replicas} processes; "
            f"each process takes an equal share of every batch, so choose a multiple of {num_replicas}"
        )


def shard(source: Any, num_replicas: int | None = None, rank: int | None = None) -> Any:
    """This process's shard of a batch source (``source.shard(N, rank)``), or the source itself
    when there is one process or the source cannot be sharded (every process then reads it all).
    ``num_replicas`` and ``rank`` default to the process group's."""
    n = world_size() if num_replicas is None else num_replicas
    r = (dist.get_rank() if is_distributed() else 0) if rank is None else rank
    if n == 1 or not callable(getattr(source, "shard", None)):
        return source
    return source.shard(n, r)


def merge_states(objects: dict[str, Any]) -> None:
    """Make each object's state the whole job's: objects with ``merge_state_dicts(list) -> dict``
    get every process's ``state_dict()`` merged and loaded (a collective; no-op alone).

    Called before rank 0 saves a checkpoint, so that state held in shards (truncated BPTT's
    carried hidden state, one block of lanes per process) is saved whole, as one process would.
    """
    if not is_distributed():
        return
    for obj in objects.values():
        merge = getattr(obj, "merge_state_dicts", None)
        if callable(merge):
            obj.load_state_dict(merge(gather(obj.state_dict())))


__all__ = [
    "Launch",
    "launched",
    "session",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "broadcast",
    "agree",
    "gather",
    "Shard",
    "Combined",
    "combine",
    "StepModule",
    "wrap",
    "shard",
    "shard_sizes",
    "check_divisible",
    "merge_states",
]
