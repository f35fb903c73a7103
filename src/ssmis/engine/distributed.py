"""One run on several processes (GPUs, nodes) with PyTorch's own ``torch.distributed``.

The processes are started by ``torchrun`` (``torchrun --nproc_per_node=N -m ssmis train ...``,
or ``ssmis train ... --gpus N``, which relaunches itself through ``torch.distributed.run``);
each reads its rank from the environment torchrun sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Without that environment (or with
``WORLD_SIZE=1``) every helper here is a no-op and the engine runs exactly as before.

What the engine does under DDP (see README "Several GPUs and nodes"):

* the method's trainable networks (:meth:`ssmis.methods.Method.ddp_networks`) are the
  parameters of one :class:`~torch.nn.parallel.DistributedDataParallel` whose forward is the
  method's ``training_step`` (:func:`wrap`): every network pass of a step, whatever the method
  calls (``encode``/``decode``, several passes), is inside one DDP forward, so the gradients of
  all of them are averaged over the processes by DDP's own reducer. EMA teachers, frozen
  encoders (``requires_grad=False``) and ``no_grad`` pseudo-label passes are outside the reducer;
  teachers are updated from the synchronised student by the method's ``on_step_end``;
* after each step the buffers of the whole method (BatchNorm statistics of students and
  teachers) are broadcast from rank 0 (DDP's ``broadcast_buffers`` convention), so every process
  holds bit-identical weights after every step;
* ``torch.nn.SyncBatchNorm`` replaces BatchNorm when asked (:func:`use_sync_bn`);
* validation and test cases are sharded over the processes (:func:`shard`) and the per-case
  results gathered back in the original order (:func:`unshard`), so every process computes the
  same mean and agrees on the best checkpoint; only rank 0 writes files.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ssmis.errors import SSMISError

T = TypeVar("T")

#: how long a collective waits for the other processes before failing (a dead rank is usually
#: detected much earlier: its connections close)
TIMEOUT = timedelta(minutes=30)


class SharedError(SSMISError):
    """A user error raised identically on every process (printed once, by rank 0)."""

    all_processes = True


# -- who am I -----------------------------------------------------------------------------------
def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SSMISError(f"WORLD_SIZE: expected an integer, got "
                         f"{os.environ['WORLD_SIZE']!r}") from None


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0: the only process that writes logs, checkpoints and results."""
    return rank() == 0


# -- start and stop -----------------------------------------------------------------------------
def backend_for(device: str) -> str:
    """'nccl' for CUDA runs (``train.device`` cuda, or auto on a CUDA machine), else 'gloo'."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def setup(device: str) -> None:
    """Join the process group torchrun describes in the environment; idempotent, and nothing
    at all without torchrun (``WORLD_SIZE`` unset or 1).

    ``device``: ``train.device`` (auto | cpu | cuda). CUDA runs use NCCL on ``cuda:LOCAL_RANK``,
    CPU runs gloo. Raises :class:`SSMISError` (one line) when the group cannot be formed.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise SSMISError("torch.distributed: this PyTorch build has no distributed support")
    backend = backend_for(device)
    where = (f"rank {os.environ.get('RANK', '?')} of {env_world_size()}, "
             f"MASTER_ADDR={os.environ.get('MASTER_ADDR', '?')}:"
             f"{os.environ.get('MASTER_PORT', '?')}")
    if backend == "nccl":
        if device == "cuda" and not torch.cuda.is_available():
            raise SSMISError("train.device: 'cuda' requested but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if local >= torch.cuda.device_count():
            raise SSMISError(f"LOCAL_RANK {local}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); start at most that "
                             "many processes per node")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except Exception as err:  # store/network/backend errors come in several types
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SSMISError(f"torch.distributed: could not start the {backend} process group "
                         f"({where}): {line}") from None


def teardown() -> None:
    """Leave the process group (end of the command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA under DDP, else ``device``."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def failure_message(err: BaseException) -> str | None:
    """One line for a collective that failed because another process died, else None."""
    if not isinstance(err, dist.DistError | RuntimeError):
        return None
    text = str(err).strip()
    markers = ("Connection closed by peer", "Connection reset by peer", "NCCL", "Gloo",
               "gloo", "ProcessGroup", "timed out", "Broken pipe")
    if not isinstance(err, dist.DistError) and not any(m in text for m in markers):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    return (f"torch.distributed: a collective failed, another process of this run has probably "
            f"stopped ({first[:200]}); continue the run with `ssmis train --resume RUN_DIR`")


# -- agreeing ----------------------------------------------------------------------------------
@contextmanager
def shared_errors() -> Iterator[None]:
    """User errors raised inside are the same on every process (deterministic checks): they
    become :class:`SharedError`, so only rank 0 prints them."""
    try:
        yield
    except SharedError:
        raise
    except SSMISError as err:
        if env_world_size() > 1:
            raise SharedError(str(err)) from None
        raise


@contextmanager
def main_only(factory: Callable[[Any], Any], *args: Any) -> Iterator[None]:
    """The context manager ``factory(*args)`` (the run-folder lock) entered by rank 0 only;
    its failure reaches every process as the same :class:`SharedError`."""
    if not is_distributed():
        with factory(*args):
            yield
        return
    stack = ExitStack()
    try:
        on_main(lambda: stack.enter_context(factory(*args)) and None)
        yield
    finally:
        stack.close()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every process (pickled; small objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` on rank 0 only (a check of every file, a folder name); its return value, or its
    :class:`SSMISError`, reaches every process, so all stop together with the same line."""
    if not is_distributed():
        return fn(*args, **kwargs)
    payload: tuple[str, Any] = ("ok", None)
    failure: BaseException | None = None
    if is_main_process():
        try:
            payload = ("ok", fn(*args, **kwargs))
        except SSMISError as err:
            payload = ("error", str(err))
        except BaseException as err:  # still tell the others before re-raising
            payload, failure = ("crash", f"{type(err).__name__}: {err}"), err
    kind, value = broadcast_object(payload)
    if failure is not None:
        raise failure
    if kind == "error":
        raise SharedError(value)
    if kind == "crash":
        raise SharedError(f"rank 0 failed: {value}")
    return value


def all_gather(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_flags(timed: bool, signum: int, *, device: torch.device) -> tuple[bool, int]:
    """(a checkpoint timer fired on any process, the largest signal number any process
    received): the same on every process, so all save and stop at the same step. One tiny
    all-reduce per training step under DDP."""
    if not is_distributed():
        return timed, signum
    t = torch.tensor([float(timed), float(signum)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item() > 0), int(t[1].item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# -- evaluation shards --------------------------------------------------------------------------
def shard(items: Sequence[T]) -> list[T]:
    """This process's cases: every ``world_size``-th item from ``rank`` (round robin)."""
    return list(items[rank()::world_size()])


def unshard(local: list[T]) -> list[T]:
    """Inverse of :func:`shard`: every process's results, back in the original order."""
    parts = all_gather(local)
    out: list[T] = []
    for i in range(max((len(p) for p in parts), default=0)):
        out.extend(p[i] for p in parts if i < len(p))
    return out


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each value over the processes (logged losses: the mean over the global batch
    for per-sample-mean losses); the same numbers on every process."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist(), strict=True))


# -- random streams -----------------------------------------------------------------------------
def rank_seed(seed: int, rank_: int, *salt: int) -> int:
    """Seed of the training random stream (dropout, noise, boxes) of process ``rank_``: the run
    seed itself on rank 0 without salt, a SeedSequence draw otherwise."""
    if rank_ == 0 and not salt:
        return seed
    state = np.random.SeedSequence([seed, rank_, *salt]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


# -- the model ----------------------------------------------------------------------------------
def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def use_sync_bn(choice: bool | str, device: torch.device, per_process_batch: int,
                module: nn.Module) -> bool:
    """Whether BatchNorm becomes SyncBatchNorm: ``train.sync_bn`` true/false, or 'auto' = on
    under DDP on CUDA when the per-process batch (labeled + unlabeled) is below 8 and the
    method has BatchNorm layers. Raises :class:`SSMISError` for ``true`` on the CPU (PyTorch's
    SyncBatchNorm runs on GPUs only)."""
    if not is_distributed() or not has_batchnorm(module):
        return False
    if choice == "auto":
        return device.type == "cuda" and per_process_batch < 8
    if choice and device.type != "cuda":
        raise SSMISError("train.sync_bn: SyncBatchNorm needs CUDA devices (NCCL); "
                         "expected false (or auto) for a CPU run")
    return bool(choice)


def convert_sync_bn(method: nn.Module) -> nn.Module:
    """Every BatchNorm of the method (students and teachers) -> SyncBatchNorm, in place; the
    parameters and buffers keep their names, so checkpoints stay interchangeable."""
    for name, child in list(method.named_children()):
        setattr(method, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return method


def _broadcast_coalesced(tensors: list[torch.Tensor]) -> None:
    """Broadcast from rank 0 in place, one flat message per (device, dtype)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = _flatten_dense_tensors(group)
        dist.broadcast(flat, src=0)
        for t, synced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            t.copy_(synced)


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers copied into every process's ``module`` (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        _broadcast_coalesced([t.data for t in module.parameters()] + list(module.buffers()))


def sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics, EMA teachers' included) on every process."""
    if not is_distributed():
        return
    with torch.no_grad():
        _broadcast_coalesced(list(module.buffers()))


class _TrainStep(nn.Module):
    """The module DDP wraps: the method's trainable networks as children (their parameters
    are DDP's), ``method.training_step`` as ``forward``. The method itself (and so its
    teachers) is held outside the module tree."""

    def __init__(self, method: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({n: getattr(method, n) for n in names})
        object.__setattr__(self, "_method", method)

    def forward(self, labeled: dict[str, Any], unlabeled: dict[str, Any] | None,
                step: int) -> dict[str, torch.Tensor]:
        return self._method.training_step(labeled, unlabeled, step)  # type: ignore[operator]


class DDPStep:
    """What the trainer steps under DDP: ``training_step`` through DDP (gradients averaged
    over the processes in ``backward``), ``on_step_end`` = the method's hook (EMA from the
    synchronised student) + :func:`sync_buffers`."""

    def __init__(self, method: Any, device: torch.device) -> None:
        names = list(method.ddp_networks())
        check_wrapped(method, names)
        self.method = method
        self.networks = names
        broadcast_state(method)  # teachers and frozen parts too, not only DDP's networks
        ddp = nn.parallel.DistributedDataParallel
        # buffers are synchronised after each step by sync_buffers, not before each forward
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                   else {"broadcast_buffers": False})
        self.ddp = ddp(
            _TrainStep(method, names),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(method.ddp_find_unused_parameters),
            **no_sync,
        )

    def training_step(self, labeled: dict[str, Any], unlabeled: dict[str, Any] | None,
                      step: int) -> dict[str, torch.Tensor]:
        return self.ddp(labeled, unlabeled, step)

    def on_step_end(self, step: int) -> None:
        self.method.on_step_end(step)
        sync_buffers(self.method)


def check_wrapped(method: Any, names: Sequence[str]) -> None:
    """Every parameter the optimizer updates belongs to a wrapped network (else its gradient
    would silently stay per-process): a method that forgets one gets this error."""
    wrapped = {id(p) for n in names for p in getattr(method, n).parameters()}
    missing = [n for n, p in method.named_parameters()
               if p.requires_grad and id(p) not in wrapped]
    if missing:
        raise SSMISError(f"method {method.name}: trainable parameter(s) {missing[:3]} are "
                         f"outside its ddp_networks() {list(names)}")


def wrap(method: Any, device: torch.device) -> Any:
    """The object the trainer steps: the method itself in a single process, else a
    :class:`DDPStep`."""
    return DDPStep(method, device) if is_distributed() else method


# -- ssmis train --gpus N -----------------------------------------------------------------------
def relaunch(argv: Sequence[str], nproc: int, *, cpu: bool = False) -> int:
    """Run ``python -m ssmis <argv>`` as ``nproc`` processes on this node through
    ``torch.distributed.run`` (torchrun; ``--standalone`` rendezvous on a free local port).
    Returns the exit status: 0, or that of the first process that failed (which printed its
    own one-line error; a process killed by a signal is reported here in one line).

    ``cpu``: gloo processes on the CPU (tests, benchmarks); otherwise ``nproc`` must not exceed
    the CUDA devices of this machine (:class:`SSMISError`)."""
    if nproc < 1:
        raise SSMISError(f"--gpus: expected a number of processes >= 1, got {nproc}")
    if not cpu:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nproc > available:
            raise SSMISError(f"--gpus {nproc}: this machine has {available} CUDA device(s)"
                             + ("" if available else " (train.device=cpu trains on the CPU)"))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--module",
         "ssmis", *argv])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    import logging

    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        run(args)
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda kv: kv[1].timestamp)
        process, first = failures[0]
        if first.exitcode < 0:
            import signal

            try:
                sig = signal.Signals(-first.exitcode).name
            except ValueError:
                sig = f"signal {-first.exitcode}"
            raise SSMISError(f"process {process} of {nproc} was killed by {sig}; the run can "
                             "be continued with `ssmis train --resume RUN_DIR`") from None
        return int(first.exitcode) or 1
    return 0
