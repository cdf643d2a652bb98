"""Training memory bounded by the configuration, not the data: each micro-batch is run as sub-batches of at most
``micro_batch_tokens`` tokens, whose gradients add up to the micro-batch's.

Why: a fine-tune's peak memory is the model, its gradients and Adam's two moments (16 bytes per parameter in fp32,
fixed), plus what one forward keeps for its backward, which grows with the tokens in it. With a fixed number of
examples per forward, that second part followed the data: eight 1,024-token LIMA answers held 11.6 GB on the default
135M model, eight GSM8K rows a fraction of it. Here a micro-batch is split into groups of at most
``micro_batch_tokens`` tokens (``BaseTrainConfig.group_tokens``: 512 on a CPU, 1,024 on a GPU unless set; one
example alone when it is longer), each group's loss is the sum of its token losses
over the same normaliser as the whole micro-batch's, and each is backpropagated before the next runs: the same
gradient (up to float summation order), the activations of one group at a time. With activation checkpointing
(``BaseTrainConfig.activation_checkpointing``) each decoder layer keeps only its input and recomputes the rest in
the backward pass; the LM head's loss works a slice at a time in both directions (scoring/passes/head.py).

What is counted as a group's tokens: its real tokens when the rows are packed (a CPU), rows x longest row when
padded.

Under a launcher (DDP, scoring.ranks) the groups run through the unwrapped model: the trunk and a sliced LM head,
not the DDP wrapper's forward, so DDP's gradient hooks never fire; the gradients are reduced here instead, once per
optimizer step (at the micro-batch Trainer marks ``sync_gradients``), summed when the loss was divided by the
tokens of every rank's batch (Trainer's ``average_tokens_across_devices``), averaged otherwise. Under FSDP
(scoring/train/sharded.py) each group runs through the sharded model's registered forward method and FSDP
reduce-scatters its gradients, summed or averaged alike.
"""
from __future__ import annotations

from scoring import ranks
from scoring.passes.engine import micro_batches
from scoring.passes.packing import packed_batches
from scoring.train import sharded

TRAIN_HEAD_ROWS = 128  # hidden states through the LM head at once while training (128 x V fp32 logits at most)


def token_groups(lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Row indices grouped within ``budget`` tokens (packed: real tokens; padded: rows x longest row), in the
    micro-batch's order; a row longer than the budget forms a group of its own."""
    groups = list(packed_batches(lengths, budget) if packed else micro_batches(lengths, budget))
    return [sorted(g) for g in sorted(groups, key=min)]


def rows_of(inputs: dict, rows: list[int]) -> dict:
    """The sub-batch of right-padded ``inputs`` (input_ids, labels, attention_mask) made of ``rows``, cut to its own
    longest row."""
    width = int(inputs["attention_mask"][rows].sum(1).max())
    return {k: v[rows, :width] for k, v in inputs.items()}


def scored_positions(inputs: dict):
    """(B, T) bool: the tokens the loss is over (labels != -100)."""
    return inputs["labels"] != -100


def backward_groups(trainer, model, group_losses, summed: bool = False) -> object:
    """Backpropagate each group's loss in turn (``group_losses``: callables, each the loss of one group, already
    scaled to its share of the micro-batch), under the trainer's autocast; returns their sum, detached (the
    micro-batch's loss as Trainer reports it). Under a launcher, at the last micro-batch of an optimizer step, the
    gradients are then reduced over the ranks: summed (``summed``: each rank's loss is already over every rank's
    tokens) or averaged. The loss returned is this rank's, scaled so that its mean over the ranks (what Trainer logs)
    is the whole step's."""
    import torch
    from accelerate.utils import AutocastKwargs

    # no cache of bf16 weight copies: with activation checkpointing they would stay alive through the backward pass
    # (+80 MB on the 135M default); a recomputed layer casts its weights again instead
    uncached = AutocastKwargs(cache_enabled=False)
    if sharded.is_sharded(model):  # FSDP reduce-scatters each group's gradients as its backward ends
        sharded.set_reduction(model, summed)
    reported = None
    for compute in sharded.matched(model, group_losses):
        with trainer.accelerator.autocast(autocast_handler=uncached):
            loss = compute()
        trainer.accelerator.backward(loss)
        reported = loss.detach() if reported is None else reported + loss.detach()
    if trainer.accelerator.sync_gradients and not sharded.is_sharded(model):
        ranks.reduce_gradients(model.parameters(), average=not summed)
    if reported is None:
        return torch.zeros(())
    # Trainer logs the mean over ranks of what each returns: a rank's share of a summed loss, times the ranks
    return reported * ranks.current().world if summed else reported


def unwrapped(trainer, model):
    """The model itself, out of the DDP wrapper Trainer puts it in under a launcher (whose forward we bypass)."""
    return trainer.accelerator.unwrap_model(model)


def bounded_step(trainer, model, inputs: dict, num_items_in_batch, budget: int, packed: bool, loss_sum):
    """One SFT micro-batch's forward and backward as token-bounded groups. ``loss_sum(model, sub_inputs)``: the sum
    of the group's token losses (differentiable), divided here by the tokens of the whole accumulated batch
    (``num_items_in_batch``, as Trainer counts them; without a count, this micro-batch's times the accumulation
    steps, Trainer's own normalisation then)."""
    import torch

    model = unwrapped(trainer, model)
    model.train()
    inputs = trainer._prepare_inputs(inputs)
    scored = scored_positions(inputs)
    if num_items_in_batch is None:
        total = scored[:, 1:].sum() * trainer.current_gradient_accumulation_steps
    else:  # every rank's tokens when Trainer averages tokens across devices (its default)
        total = num_items_in_batch
    total = torch.as_tensor(total, device=scored.device, dtype=torch.float32)
    groups = token_groups(inputs["attention_mask"].sum(1).tolist(), budget, packed)
    summed = num_items_in_batch is not None and trainer.args.average_tokens_across_devices
    losses = [lambda rows=rows: sharded.run(model, loss_sum, rows_of(inputs, rows)) / total for rows in groups]
    return backward_groups(trainer, model, losses, summed)
