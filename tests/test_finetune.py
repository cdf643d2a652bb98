"""Reference fine-tuning really trains, on the response tokens only, and its checkpoint is reused by key."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from scoring.finetune import TrainConfig, _Examples, reference_key, train_reference
from scoring.formatting import template_fingerprint
from scoring.models import ModelRef, load_tokenizer, resolve

CONVS = [
    [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]
    for i in range(24)
]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder) + "/model.safetensors")


def train(cache, model_folder, cfg):
    base = resolve(str(model_folder), cache)
    tokenizer = load_tokenizer(base)
    ref = train_reference(cache, base, tokenizer, CONVS, "dataset-fp", template_fingerprint(tokenizer), 64, cfg)
    return base, ref


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_changes_the_weights(cache, tiny_model, method):
    cfg = TrainConfig(method=method, learning_rate=1e-3, lora_learning_rate=1e-2, precision="fp32")
    base, ref = train(cache, tiny_model, cfg)
    before, after = weights(base.path), weights(ref.path)
    assert before.keys() == after.keys()  # LoRA is merged back: the checkpoint loads like the base
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no weight moved"
    if method == "lora":
        assert any("proj" in k for k in changed)
    assert ref.fingerprint != base.fingerprint


def test_the_same_inputs_reuse_the_checkpoint_and_new_ones_train_again(cache, tiny_model):
    cfg = TrainConfig(learning_rate=1e-3, precision="fp32")
    _, first = train(cache, tiny_model, cfg)
    mtime = (first.path and (cache.models_dir() / first.name / "model.safetensors").stat().st_mtime_ns)
    _, again = train(cache, tiny_model, cfg)
    assert again.path == first.path
    assert (cache.models_dir() / again.name / "model.safetensors").stat().st_mtime_ns == mtime
    _, other = train(cache, tiny_model, TrainConfig(learning_rate=2e-3, precision="fp32"))
    assert other.path != first.path
    assert not list(cache.models_dir().glob(".ref-*.partial"))  # the staging folder is cleaned up


def test_labels_cover_only_the_response(tiny_model):
    tokenizer = load_tokenizer(ModelRef("tiny", str(tiny_model), "x"))
    item = _Examples(tokenizer, CONVS[:1], 64)[0]
    scored = [t for t, label in zip(item["input_ids"], item["labels"]) if label != -100]
    assert tokenizer.decode(scored) == "0 + 0 = 0.<|im_end|>"


def test_reference_key_depends_on_every_input():
    base = ModelRef("m", "/x", "fp")
    key = reference_key(base, "d", "t", 64, TrainConfig())
    assert key == reference_key(base, "d", "t", 64, TrainConfig())
    assert key != reference_key(base, "d2", "t", 64, TrainConfig())
    assert key != reference_key(base, "d", "t", 128, TrainConfig())
    assert key != reference_key(base, "d", "t", 64, TrainConfig(epochs=2))
    assert key != reference_key(ModelRef("m", "/x", "fp2"), "d", "t", 64, TrainConfig())


def test_a_cancelled_training_keeps_a_checkpoint_and_resumes(cache, tiny_model):
    cfg = TrainConfig(learning_rate=1e-3, precision="fp32", batch_size=2, micro_batch_size=2)
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    steps = []
    stopped = train_reference(
        cache, base, tokenizer, CONVS, "fp", template_fingerprint(tokenizer), 64, cfg,
        on_progress=lambda step, total: steps.append((step, total)), should_stop=lambda: len(steps) >= 3,
    )  # fmt: skip
    assert stopped is None
    partial = list(cache.models_dir().glob(".ref-*.partial/checkpoint-*"))
    assert partial, "a cancelled run saves where it stopped"
    steps.clear()
    ref = train_reference(
        cache, base, tokenizer, CONVS, "fp", template_fingerprint(tokenizer), 64, cfg,
        on_progress=lambda step, total: steps.append((step, total)),
    )  # fmt: skip
    assert ref is not None and steps[0][0] > 3  # picked up after the checkpoint, not from step 1
    assert steps[-1][0] == steps[-1][1] == len(CONVS) // 2
