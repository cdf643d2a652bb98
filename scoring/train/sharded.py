"""FSDP: training a model too big for one device, its weights, gradients and Adam moments split over the ranks.

The switch is ``DAVIR_FSDP=1`` in the environment of a ``torchrun`` / ``accelerate launch`` job (scoring.env); without
it, or in a single process, training is data-parallel (DDP), the model whole on every rank. It changes no weight
beyond float rounding, so it is not part of any checkpoint key, and a job may be re-launched with or without it; only
a Trainer checkpoint saved halfway through must be resumed under the layout that saved it.

How (PyTorch's FSDP2, ``fully_shard``, on the same process group as everything else: NCCL on GPUs, gloo on a CPU):

- every decoder layer is one unit and the rest of the model (embeddings, final norm, LM head, tied or not) the root
  unit; a unit's full weights exist only while it runs (each layer's again for its backward pass), its gradients
  are reduce-scattered as soon as its backward is done, and each rank keeps and updates its 1/world share;
- the token-bounded training step (scoring/train/bounded.py) runs the model's trunk and a sliced LM head directly,
  not through ``forward``, so the loss of each group runs as ``model.davir_run(fn, ...)``, a method registered with
  FSDP as a forward (:func:`run`): the root unit gathers its weights before it and the layers theirs as they are
  called;
- every forward is a collective step (weights are gathered), so a rank whose share of a micro-batch splits into
  fewer token groups than another's runs extra ones, weighted 0, until it has run as many (:func:`matched`); a
  forward without gradients (π_ref's log-probs) reshards every unit after it, as no backward pass will;
- gradients are summed (or averaged) over the ranks as the DDP path sums (or averages) them
  (:func:`set_reduction`); the reductions are plain sums, the division done apart, because gloo has neither an
  averaging nor a pre-scaled sum;
- a resumable Trainer checkpoint is the model's and the optimizer's shards through ``torch.distributed.checkpoint``
  (:class:`ShardedCheckpoints`), which reshards on load, so a run may resume on another number of ranks; the final
  model is gathered whole onto rank 0 (:func:`full_state_dict`) and saved like any other.

Not sharded: LoRA (its adapters are small; with LoRA the base model must fit one device), and the scoring passes,
which run inference on a whole model per rank. The SFT reference (and an evaluation's SFT arms) is loaded sharded
(:func:`load`): only rank 0 reads the weights whole, the other ranks build the model on the meta device and
receive their shares, so a node's host memory holds one fp32 copy, not one per process. The DPO warm-ups load the
same way (scoring/train/dpo.py skips TRL's weight hash, which cannot read sharded weights).
"""
from __future__ import annotations

import types
from pathlib import Path
from typing import Callable

from scoring import ranks
from scoring.env import fsdp_requested
from scoring.errors import UserError

SHARDS = "sharded"  # the folder, inside a Trainer checkpoint, of the model's and optimizer's shards


def wanted(method: str) -> bool:
    """Whether this run trains sharded: ``DAVIR_FSDP`` set and more than one process. LoRA is refused there."""
    if not (fsdp_requested() and ranks.current().many):
        return False
    if method == "lora":
        raise UserError("DAVIR_FSDP=1 shards full fine-tuning only: with --train-method lora the base model must "
                        "fit one device (unset DAVIR_FSDP to train LoRA data-parallel)")
    return True


def _layer_classes(model) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise UserError(f"{type(model).__name__} names no decoder layer class (_no_split_modules), so FSDP cannot "
                        "split it into units; unset DAVIR_FSDP to train it data-parallel")
    return names


def _run(self, fn, *args):
    return fn(self, *args)


def shard(model, device: str):
    """``model`` split over the ranks in place, on ``device``'s kind (cuda: each rank's own GPU); returns it. A unit
    per decoder layer, the rest in the root unit. Trainer is told that it must neither wrap the model in DDP nor move
    it whole onto the device (as for a model transformers shards itself at load time)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    classes = _layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise UserError(f"none of {type(model).__name__}'s modules is a {' / '.join(sorted(classes))}")
    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (ranks.join().world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in units(model):
        unit.set_force_sum_reduction_for_comms(True)
    model.davir_run = types.MethodType(_run, model)
    register_fsdp_forward_method(model, "davir_run")
    model._is_distributed_loading_by_transformers = True
    return model


def load(path: str, device: str, read_whole: Callable, trust_remote_code: bool = False):
    """The model in folder ``path`` sharded over the ranks, with no whole copy on any rank but 0.

    Every rank builds the model on the meta device (no memory, fp32) and shards it (:func:`shard`); rank 0 alone
    reads the weights, as ``read_whole()`` loads them for one process (trainer.load_base), and sends each rank its
    shares (``set_model_state_dict(..., broadcast_from_rank0=True)``), then the
    buffers that are not weights (a rotary embedding's tables), which the meta model has none of. Rank 0's model
    carries the generation config ``from_pretrained`` read, as the one process's does, since rank 0 saves it."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    whole = read_whole() if ranks.current().main else None
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    shard(model, device)
    model.to_empty(device=device)
    set_model_state_dict(model, whole.state_dict() if whole is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))  # fmt: skip
    known = dict(whole.named_buffers()) if whole is not None else {}
    for name, buffer in model.named_buffers():
        if whole is not None:
            buffer.copy_(known[name])
        dist.broadcast(buffer, src=0)
    if whole is not None:
        model.generation_config = whole.generation_config
    return model


def units(model) -> list:
    """The FSDP units of ``model`` (none when it is not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model) -> bool:
    return hasattr(model, "davir_run")


def run(model, fn, *args):
    """``fn(model, *args)``, through FSDP's forward hooks when ``model`` is sharded (its weights gathered first).
    Without gradients (π_ref's log-probs before training), every unit is resharded after it: the root unit keeps
    its gathered weights after a forward for the backward pass to come, and with none coming, the next steps would
    run on that stale copy (a DPO run whose trainer computed π_ref's log-probs first trained 69 % off)."""
    if not is_sharded(model):
        return fn(model, *args)
    out = model.davir_run(fn, *args)
    import torch

    if not torch.is_grad_enabled():
        for unit in units(model):
            unit.reshard()
    return out


def matched(model, calls: list) -> list:
    """``calls`` (each runs one forward of ``model``) and, when it is sharded, repeats of the first, each returning
    0 times its result, up to as many calls as the rank with the most has: under FSDP every forward gathers weights
    with the other ranks (a collective step), so a rank whose share of a micro-batch splits into fewer token groups
    than another's still takes every collective step with it, and its gradients do not change."""
    if not calls:
        raise ValueError("a rank has no forward pass to match the others' with")
    extra = ranks.most(len(calls)) - len(calls) if is_sharded(model) else 0
    return list(calls) + [lambda: calls[0]() * 0.0] * extra


def set_reduction(model, summed: bool) -> None:
    """Make each backward's reduce-scatter sum the ranks' gradients (``summed``: each rank's loss is already over
    every rank's tokens) or average them, as the DDP path's reduction does."""
    factor = 1.0 if summed else float(ranks.current().world)
    for unit in units(model):
        unit.set_gradient_divide_factor(factor)


def full_state_dict(model) -> dict:
    """The whole model's weights on rank 0's CPU (empty on the others), a tied weight (the LM head that is the
    input embedding) once, under its first name, as save_pretrained writes it; a collective step every rank must
    take."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            state.pop(name, None)
    return state


class ShardedCheckpoints:
    """A Trainer mixin: under FSDP a resumable checkpoint holds the model's and the optimizer's shards (torch's
    distributed checkpoint, written by every rank, readable by any number of ranks) instead of one rank's copy of
    each; the scheduler, the Trainer state and the RNG states are saved as always. Without FSDP it changes nothing,
    but refuses to resume a checkpoint saved under the other layout."""

    def _sharded(self) -> bool:
        return is_sharded(self.model)

    def _shards(self) -> dict:
        """{"model", "optimizer"}: this rank's shards of both, as torch's distributed checkpoint reads and writes
        them."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def save_model(self, output_dir=None, _internal_call=False):
        if self._sharded() and _internal_call:
            return  # saved with the optimizer's shards, below
        return super().save_model(output_dir, _internal_call)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._sharded():
            return super()._save_optimizer_and_scheduler(output_dir)
        import torch
        import torch.distributed.checkpoint as dcp

        dcp.save(self._shards(), checkpoint_id=str(Path(output_dir) / SHARDS))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / "scheduler.pt")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        saved_sharded = (Path(resume_from_checkpoint) / SHARDS).is_dir()
        if saved_sharded != self._sharded():
            raise UserError(f"{resume_from_checkpoint} was saved {'with' if saved_sharded else 'without'} "
                            f"DAVIR_FSDP=1: re-launch {'with' if saved_sharded else 'without'} it to resume, or delete "
                            f"{Path(resume_from_checkpoint).parent} to train from the start")
        if not self._sharded():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        return None  # the shards are loaded with the optimizer's, once it exists

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        if checkpoint is None or not self._sharded():
            return super()._load_optimizer_and_scheduler(checkpoint)
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._shards()
        dcp.load(state, checkpoint_id=str(Path(checkpoint) / SHARDS))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])  # fmt: skip
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / "scheduler.pt", weights_only=True))
