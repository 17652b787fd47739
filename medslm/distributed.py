"""All process-group code: nothing else in medslm imports ``torch.distributed``.

- ``init_distributed()`` reads torchrun's environment (NCCL on GPU, gloo on CPU with an explicit
  CPU device mesh); plain ``python train.py`` is a world of one with no process group.
- ``shard_adapter()`` applies FSDP2 ``fully_shard`` to every decoder layer and the root with
  ``ignored_params`` = the frozen (4-bit) base: only the LoRA adapter and its optimizer state are
  sharded, the quantised base stays replicated on every rank.
- Reductions, barriers, object broadcast, and gathering/scattering the adapter and optimizer
  state for checkpoints.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistState:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def init_distributed(device: str = "auto") -> DistState:
    """Process group from torchrun's env vars; a world of one without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and local_rank >= torch.cuda.device_count():
        from medslm.cli import UserError

        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no usable CUDA (torch " \
            f"{torch.__version__}, built {'without CUDA' if torch.version.cuda is None else 'with CUDA ' + torch.version.cuda})"
        fix = "use train.device=auto or cpu, or fewer ranks per node" if device == "cuda" else "launch at most one rank per GPU, or set train.device=cpu"
        raise UserError(f"train.device={device}: local rank {local_rank} needs a GPU, but this machine has {have}; {fix}")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world == 1:
        return DistState(0, 1, 0, dev, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("dp",))
    return DistState(rank, world, local_rank, dev, backend, mesh)


def shutdown(state: DistState) -> None:
    if state.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(state: DistState) -> None:
    if state.distributed:
        dist.barrier()


def _comm_device(state: DistState) -> torch.device:
    """NCCL reduces only CUDA tensors; gloo reduces CPU tensors."""
    return state.device if state.backend == "nccl" else torch.device("cpu")


def _all_reduce(state: DistState, value: torch.Tensor, op: Any) -> torch.Tensor:
    if not state.distributed:
        return value
    buf = value.detach().to(_comm_device(state), copy=True)
    dist.all_reduce(buf, op=op)
    return buf.to(value.device)


def all_reduce_sum(state: DistState, value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; the result is on the device ``value`` came from."""
    return _all_reduce(state, value, dist.ReduceOp.SUM)


def all_reduce_max_tensor(state: DistState, value: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks, on the device ``value`` came from; nothing is read back."""
    return _all_reduce(state, value, dist.ReduceOp.MAX)


def all_reduce_max(state: DistState, value: float) -> float:
    if not state.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(state))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(state: DistState, obj: Any) -> Any:
    if not state.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(state: DistState, obj: Any) -> list[Any]:
    if not state.distributed:
        return [obj]
    out: list[Any] = [None] * state.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_adapter(model: torch.nn.Module, layers: list[torch.nn.Module], state: DistState) -> torch.nn.Module:
    """FSDP2 over the trainable (LoRA) parameters only; the frozen base is ignored (replicated)."""
    from torch.distributed.fsdp import fully_shard

    frozen = {p for p in model.parameters() if not p.requires_grad}
    for layer in layers:
        fully_shard(layer, mesh=state.mesh, ignored_params=frozen, reshard_after_forward=True)
    fully_shard(model, mesh=state.mesh, ignored_params=frozen, reshard_after_forward=True)
    return model


def reset_after_failed_step(model: torch.nn.Module) -> bool:
    """Make FSDP2 usable again after an exception aborted a forward or backward mid-flight.

    FSDP2 then holds unsharded parameters and half-done collectives; ``FSDPModule.reset_iter_state``
    (torch >= 2.13) waits on them, reshards and clears its per-step state (the step's gradients
    are lost). Returns False when the model is sharded and this torch has no such reset; True
    when there is nothing to reset or it was reset.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return True
    reset = getattr(model, "reset_iter_state", None)
    if reset is None:
        return False
    reset()
    return True


def is_sharded(param: torch.Tensor) -> bool:
    return type(param).__name__ == "DTensor"


def all_reduce_grads(state: DistState, params: list[torch.nn.Parameter]) -> None:
    """Average gradients of replicated (non-FSDP) trainable params across ranks, like DDP."""
    if not state.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(state.world_size)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to a plain tensor (a collective: every rank must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) trainable parameters on CPU, named as ``model.named_parameters`` does."""
    return {n: full_tensor(p.detach()).cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full trainable tensors into a (possibly sharded) model; each rank keeps its shard."""
    from torch.distributed.tensor import distribute_tensor

    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in full]
    if missing:
        raise KeyError(f"checkpoint lacks trainable parameters: {missing[:3]}...")
    with torch.no_grad():
        for name, value in full.items():
            p = params[name]
            if is_sharded(p):
                p.copy_(distribute_tensor(value.to(device=p.device, dtype=p.dtype), p.device_mesh, p.placements))
            else:
                p.copy_(value.to(device=p.device, dtype=p.dtype))


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: DistState) -> dict:
    """The whole optimizer state, unsharded, on CPU, keyed by parameter name (the adapter is small:
    this stays cheap). The same layout in a world of one and under FSDP, so a checkpoint resumes
    under another world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if state.distributed:
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = _param_names(model, optimizer)  # the layout get_optimizer_state_dict gives, without a process group
    osd = optimizer.state_dict()
    return {
        "state": {names[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()} for i, st in osd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]],
    }


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, osd: dict, state: DistState) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if state.distributed:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=osd, options=StateDictOptions(full_state_dict=True))
        return
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    unknown = [n for n in osd["state"] if n not in index]
    if unknown:
        raise KeyError(f"optimizer state for parameters this model lacks: {unknown[:3]}")
    optimizer.load_state_dict({
        "state": {index[n]: st for n, st in osd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]],
    })


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own order (the integer ids of ``optimizer.state_dict()``)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
