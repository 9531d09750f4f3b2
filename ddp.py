"""Data parallelism with PyTorch's own engine (torch.distributed + DistributedDataParallel), active under torchrun.

``python distill.py ...`` runs in one process and none of this does anything.  Under
``torchrun --nproc_per_node=K distill.py ...`` every process draws its own batch (per-rank random streams), DDP
averages the generator's and the auxiliary model's gradients, so all ranks hold identical weights, and only rank 0
logs, draws grids, evaluates and writes checkpoints.  The global batch is K x --batch-size.  Backend: nccl on
CUDA, gloo on CPU.
"""
import gc
import os

import torch
import torch.distributed as dist


def active():
    return dist.is_available() and dist.is_initialized()


def setup():
    """Start the process group once if torchrun launched us (RANK/WORLD_SIZE are set)."""
    if "RANK" in os.environ and not active():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def local_device(device):
    """'auto' -> this rank's GPU under torchrun with CUDA, else the device asked for."""
    setup()
    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


class Call(torch.nn.Module):
    """Routes fn(model, ...) through forward(), which is where DDP hooks its gradient averaging."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args, **kwargs):
        return self.fn(self.model, *args, **kwargs)


def wrap(model, fn):
    """A module computing fn(model, ...) in forward, DDP-wrapped when running distributed.  Only trainable
    parameters are synchronised; DDP also broadcasts rank 0's weights once, so every rank starts equal."""
    call = Call(model, fn)
    if not active():
        return call
    ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(call, device_ids=ids)


def model_device(model):
    return next(model.parameters()).device


def comm_device():
    """Where collective tensors must live: nccl only moves CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_ok(flag):
    """True only if flag is True on every rank (so that all ranks stop or skip together)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def checksums(*models):
    """Every rank's fingerprint of the given models' weights (float64 sums), gathered: equal lists = equal weights
    up to summation; used to confirm that the ranks end identical."""
    local = torch.tensor([sum(p.detach().double().sum().item() + (p.detach().double() ** 2).sum().item()
                              for p in m.parameters()) for m in models], dtype=torch.float64)
    if not active():
        return [local.tolist()]
    local = local.to(comm_device())
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [t.tolist() for t in out]


def barrier():
    if active():
        dist.barrier()


def cleanup(run=None):
    """Destroy the process group, after dropping the run's DDP wrappers: a wrapper (its reducer, held in reference
    cycles, hence the collect) that outlives its group made about one exit in six abort (SIGABRT) after a finished
    run."""
    if active():
        for name, value in list(vars(run).items()) if run is not None else ():
            if isinstance(value, torch.nn.parallel.DistributedDataParallel):
                setattr(run, name, None)
        gc.collect()
        dist.destroy_process_group()
