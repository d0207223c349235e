"""`PerturbAndMergeCallback` with a plain `transformers.Trainer`, two tasks, a tiny BERT classifier on CPU."""
from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from perturbmerge import PerturbAndMerge
from perturbmerge.integrations import PerturbAndMergeCallback

EPSILON = 0.5


class TinyTask(torch.utils.data.Dataset):
    def __init__(self, seed: int, n: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 6), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_callback_perturbs_each_optimiser_step_and_merges_each_task(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    pm = PerturbAndMerge(model, targets=["query", "value"], rank=2, epsilon=EPSILON, seed=1,
                         train_modules=["classifier"])
    head_before = model.classifier.weight.detach().clone()
    callback = PerturbAndMergeCallback(pm)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             max_steps=3, learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0)
    for task in range(2):
        trainable = pm.begin_task()
        layer = next(iter(pm.adaptation.layers.values()))
        base_scale = layer.scaling["default"]
        seen: list[float] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(module.scaling["default"]))
        Trainer(model=trainable, args=args, train_dataset=TinyTask(task), callbacks=[callback]).train()
        handle.remove()
        record = callback.records[-1]
        draws = record.perturbation_draws
        assert sum(draws.values()) == 3  # one draw per optimiser step, not per micro-batch
        training = seen[: 3 * 2]  # 3 steps x 2 micro-batches; the Fisher pass comes after, at scale 1
        assert all(a == b for a, b in zip(training[::2], training[1::2]))  # both micro-batches: the same draw
        counts = {s: sum(abs(v - (1 + s * EPSILON) * base_scale) < 1e-12 for v in training[::2]) for s in (-1, 0, 1)}
        assert counts == {int(k): v for k, v in draws.items()}
        assert all(abs(v - base_scale) < 1e-12 for v in seen[6:])  # Fisher at the unperturbed weights
        assert record.fisher_mass > 0 and 0.0 <= record.alpha <= 1.0
    assert type(pm.model) is BertForSequenceClassification
    assert not torch.equal(pm.model.classifier.weight, head_before)  # the head trained directly
    assert callback.records[0].task == 1 and callback.records[1].task == 2 and 0 < callback.records[1].alpha < 1
    assert {entry["task"] for entry in callback.losses} == {1, 2}
    with torch.no_grad():  # the merged classifier still runs, adapters gone
        logits = pm.model(input_ids=torch.randint(1, 50, (2, 6))).logits
    assert logits.shape == (2, 2) and not any("lora" in n for n, _ in pm.model.named_parameters())


def test_save_pretrained_writes_a_plain_hf_model_and_the_running_sums(tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    pm = PerturbAndMerge(BertForSequenceClassification(config), targets=["query", "value"], rank=2,
                         train_modules=["classifier"])
    callback = PerturbAndMergeCallback(pm)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, max_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=pm.begin_task(), args=args, train_dataset=TinyTask(0), callbacks=[callback]).train()
    pm.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
    for (k, a), b in zip(pm.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    again = PerturbAndMerge(loaded, targets=["query", "value"], rank=2)
    again.load_running_state(tmp_path / "merged")
    for k, v in pm.state_dict()["fisher_sum"].items():
        assert torch.equal(again.state_dict()["fisher_sum"][k], v)
    assert again.state_dict()["num_tasks"] == 1


class TinyCompletions(torch.utils.data.Dataset):
    """Prompt + completion token ids of the character tokenizer, labels −100 on the prompt (a causal-LM batch)."""

    def __init__(self, pairs) -> None:
        from helpers import tiny_character_tokenizer

        tokenizer = tiny_character_tokenizer()
        self.items = []
        for prompt, completion in pairs:
            p = tokenizer(prompt)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (p + c + [0] * 12)[:12]
            labels = ([-100] * len(p) + c + [-100] * 12)[:12]
            mask = [1] * min(len(p) + len(c), 12) + [0] * (12 - min(len(p) + len(c), 12))
            self.items.append({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                               "labels": torch.tensor(labels)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def test_the_callback_merges_a_causal_lm_trained_with_an_lm_loss(tmp_path):
    """Issue 49: with token labels the callback's default loss is the causal-LM one (it used to crash after
    training), α comes from the summed completion NLL, and save_pretrained writes the tokenizer beside the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import save_tiny_llama, tiny_character_tokenizer

    save_tiny_llama(tmp_path / "lm")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    pm = PerturbAndMerge(model, targets=["q_proj", "v_proj"], rank=2, epsilon=EPSILON, seed=1)
    callback = PerturbAndMergeCallback(pm)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             seed=0)
    tasks = [[("1", "one"), ("2", "two"), ("3", "three"), ("4", "four")],
             [("1", "eins"), ("2", "zwei"), ("3", "drei"), ("4", "vier")]]
    for pairs in tasks:
        Trainer(model=pm.begin_task(), args=args, train_dataset=TinyCompletions(pairs), callbacks=[callback]).train()
    assert [r.task for r in callback.records] == [1, 2] and callback.records[0].alpha == 1.0
    assert 0.0 <= callback.records[1].alpha <= 1.0 and callback.records[1].fisher_mass > 0
    pm.save_pretrained(tmp_path / "merged", tokenizer=tiny_character_tokenizer())
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert tokenizer.decode(tokenizer("one")["input_ids"], skip_special_tokens=True) == "one"
    for (name, a), b in zip(pm.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_causal_lm_loss_is_the_summed_nll_of_the_labelled_tokens():
    from transformers import AutoModelForCausalLM

    from perturbmerge.integrations import causal_lm_loss

    from helpers import save_tiny_llama
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_tiny_llama(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
    batch = TinyCompletions([("1", "one"), ("12", "twelve")]).items
    batch = {k: torch.stack([item[k] for item in batch]) for k in batch[0]}
    losses = causal_lm_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for n in range(2):
        expected = sum(-logits[n, j - 1].log_softmax(-1)[batch["labels"][n, j]]
                       for j in range(1, 12) if batch["labels"][n, j] != -100)
        torch.testing.assert_close(losses[n], expected, rtol=1e-5, atol=1e-5)
