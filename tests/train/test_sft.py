"""Reference fine-tuning really trains, on the response tokens only, and its checkpoint is reused by key."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from scoring.errors import UserError
from scoring.models.formatting import template_fingerprint
from scoring.models.loading import ModelRef, load_model, load_tokenizer, resolve
from scoring.store.cache import Cache
from scoring.train.sft import Examples, collator, packed_sft_loss, reference_key, train_reference
from scoring.train.sft_config import TrainConfig

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
    item = Examples(tokenizer, CONVS[:1], 64)[0]
    scored = [t for t, label in zip(item["input_ids"], item["labels"]) if label != -100]
    assert tokenizer.decode(scored) == "0 + 0 = 0.<|im_end|>"


def test_examples_hold_every_scored_example_compactly_from_a_one_shot_stream(tiny_model, monkeypatch):
    """The reference's dataset: the same ids and labels as encoding each conversation on its own, examples with
    no response token left out, across tokenising chunks, from a generator read once; and held in flat arrays
    (~5 bytes a token), not Python lists of ints (~150)."""
    from scoring.models.formatting import encode

    tokenizer = load_tokenizer(ModelRef("tiny", str(tiny_model), "x"))
    no_answer = [{"role": "user", "content": "Nothing to learn here"}]  # no assistant turn: nothing scored
    convs = CONVS[:5] + [no_answer] + CONVS[5:11]
    monkeypatch.setattr(Examples, "CHUNK", 4)  # three chunks, the no-answer one inside the second
    items = Examples(tokenizer, (c for c in convs), 64)
    expected = [encode(tokenizer, c, 64) for c in convs]
    expected = [e for e in expected if e.n_response_tokens]
    assert len(items) == len(expected) == 11
    for i, e in enumerate(expected):
        assert items[i]["input_ids"].tolist() == e.ids
        assert items[i]["labels"].tolist() == [t if s else -100 for t, s in zip(e.ids, e.scored)]
    assert items.lengths() == [len(e.ids) for e in expected]
    assert items[-1]["input_ids"].tolist() == expected[-1].ids
    with pytest.raises(IndexError):
        items[11]
    tokens = sum(len(e.ids) for e in expected)
    held = items.ids.nbytes + items.scored.nbytes + items.starts.nbytes
    assert held <= 5 * tokens + 8 * (len(items) + 1)
    assert len(Examples(tokenizer, iter([no_answer]), 64)) == 0


def test_no_response_within_the_max_length_is_a_clear_error(cache, tiny_model):
    """Every response cut off by --max-length leaves nothing to fine-tune on: a message saying so, not
    transformers' "max_steps must be set to a positive value", and no staging folder left behind."""
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    long_question = [{"role": "user", "content": "Add these: " + " + ".join(map(str, range(100)))},
                     {"role": "assistant", "content": "4950."}]  # fmt: skip
    with pytest.raises(UserError, match="none has a response token within the first 64 tokens"):
        train_reference(cache, base, tokenizer, [long_question] * 3, "fp", template_fingerprint(tokenizer), 64,
                        TrainConfig(precision="fp32"))  # fmt: skip
    assert not list(cache.models_dir().glob(".ref-*"))


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


def batch_of(tokenizer, convs):
    items = Examples(tokenizer, convs, 64)
    return collator(tokenizer.pad_token_id)([items[i] for i in range(len(items))])


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("system", [False, True])
def test_the_packed_training_loss_is_the_models_loss_with_the_same_gradients(tiny_model, method, system):
    """What the CPU trainer optimises: the same loss and gradients as ``model(**batch).loss`` on the padded batch,
    with and without a shared prefix (a system prompt computed once for the whole row)."""
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer, model = load_tokenizer(ref), load_model(ref)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    sys_turn = [{"role": "system", "content": "Answer with the sum, then stop."}] if system else []
    batch = batch_of(tokenizer, [sys_turn + c for c in CONVS[:6]])

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads(lambda: model(**batch).loss)
    packed_loss, packed_grads = loss_and_grads(lambda: packed_sft_loss(model, batch))
    assert packed_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == packed_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    labels = int((batch["labels"][:, 1:] != -100).sum())  # normalised by the accumulated batch's labels when given
    assert packed_sft_loss(model, batch, 2 * labels).item() == pytest.approx(plain_loss / 2, rel=1e-5)


def test_a_reference_trained_packed_loads_with_plain_transformers(cache, tiny_model):
    _, ref = train(cache, tiny_model, TrainConfig(learning_rate=1e-3, precision="fp32"))
    assert "davir" not in (cache.models_dir() / ref.name / "config.json").read_text()


def test_bf16_precision_reaches_the_packed_loss(cache, tiny_model):
    """accelerate applies mixed precision around model.forward, which the packed loss does not call: the trainer
    enters autocast itself, so a bf16 run trains differently from an fp32 one."""
    _, bf16 = train(cache, tiny_model, TrainConfig(learning_rate=1e-3, precision="bf16"))
    _, fp32 = train(cache, tiny_model, TrainConfig(learning_rate=1e-3, precision="fp32"))
    a, b = weights(bf16.path), weights(fp32.path)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_training_rows_packed_or_padded_reach_the_same_weights(tmp_path, tiny_model):
    """``TrainConfig.pack``: "auto" packs on a CPU, "off" pads, "on" packs on a GPU too; the layout moves only float
    rounding, so it is not part of the key and both give the same reference."""
    assert TrainConfig(pack="on").packs("cuda:0") and not TrainConfig().packs("cuda") and TrainConfig().packs("cpu")
    assert not TrainConfig(pack="off").packs("cpu")
    with pytest.raises(ValueError, match="pack must be"):
        TrainConfig(pack="yes").packs("cpu")
    base = ModelRef("m", "/x", "fp")
    assert reference_key(base, "d", "t", 64, TrainConfig(pack="off")) == reference_key(base, "d", "t", 64, TrainConfig())
    refs = {}
    for pack in ("auto", "off"):
        cfg = TrainConfig(learning_rate=1e-3, precision="fp32", pack=pack)
        refs[pack] = weights(train(Cache(tmp_path / pack), tiny_model, cfg)[1].path)
    before = weights(str(tiny_model))
    for name, packed in refs["auto"].items():
        padded = refs["off"][name]
        assert not torch.equal(packed, before[name]) or name.endswith("norm.weight")
        torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(refs["auto"][k], refs["off"][k]) for k in before)  # two layouts did run
