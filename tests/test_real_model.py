"""The real-model tier: SmolLM2-135M-Instruct (a real pretrained chat model, real tokenizer and
chat template), fetched once with `make real-model`; skipped with the reason when it was not.

Checks the path users take on real models: bridge = HF, the AO prompt through the chat template,
capture at several layers and sites, our injection = a plain forward hook on
``model.model.layers[1]``, LoRA on all linear projections runs, a few steps lower the loss,
save/load, KV-cached = uncached generation with injection, and the doctor on the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lens_oracle.fetch import fetched_model

pytestmark = pytest.mark.real
FOLDER = fetched_model("smollm2")
if FOLDER is None:
    pytest.skip("SmolLM2 has not been fetched; run `make real-model` (or `lens-oracle fetch smollm2`)",
                allow_module_level=True)

PROMPTS = ["The Eiffel Tower is in Paris, the capital of France.", "My favourite fruit is a ripe mango."]
QUESTIONS = ["What city is mentioned?", "What fruit is it?"]
PLACEHOLDER_ID = 9148  # " ?"


@pytest.fixture(scope="module")
def oracle() -> Any:
    from lens_oracle.config import AdapterConfig
    from lens_oracle.oracle import ActivationOracle

    from arch_helpers import randomize_lora

    oracle = ActivationOracle.create(FOLDER, adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0))
    randomize_lora(oracle.model.peft_model, std=0.02)  # a visible adapter: random B matrices
    return oracle


@pytest.fixture(scope="module")
def plain() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(FOLDER), dtype=torch.float32, local_files_only=True).eval()


def test_it_is_the_model_we_expect(oracle: Any) -> None:
    model = oracle.model
    assert (model.architecture, model.n_layers, model.d_model, model.d_vocab) == ("LlamaForCausalLM", 30, 576, 49152)
    assert model.tokenizer(" ?", add_special_tokens=False)["input_ids"] == [PLACEHOLDER_ID]


def test_bridge_logits_equal_hf(oracle: Any, plain: Any) -> None:
    ids = oracle.model.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad(), oracle.adapter_disabled() as base:
        ours = base.logits(ids)
        reference = plain(ids).logits
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_ao_prompt_through_the_chat_template(oracle: Any) -> None:
    from lens_oracle.prompt import IGNORE_INDEX, encode_oracle_prompt

    encoded = encode_oracle_prompt(oracle.model.tokenizer, oracle.config.prompt, 15, 4, "What is it?", "Paris")
    ids, labels = list(encoded.input_ids), list(encoded.labels)
    text = oracle.model.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n")  # the template's default system prompt is there
    runs = [i for i, t in enumerate(ids) if t == PLACEHOLDER_ID]
    assert len(runs) == 4 and runs == list(range(runs[0], runs[0] + 4))  # consecutive single tokens
    assert oracle.model.tokenizer.decode(ids[: runs[0]]).endswith("Layer: 15\n")
    answer = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert oracle.model.tokenizer.decode(answer).strip().startswith("Paris")
    assert all(label == IGNORE_INDEX for label in labels[: len(ids) - len(answer)])
    batch = oracle.encode([torch.randn(4, 576)], [15], ["What is it?"])
    assert batch.placeholders.sum().item() == 4
    assert batch.input_ids[0, batch.placeholders[0]].eq(PLACEHOLDER_ID).all()


def test_capture_at_several_layers_and_sites(oracle: Any) -> None:
    from lens_oracle.activations import LastK, capture_layers

    with oracle.adapter_disabled() as base:
        post = capture_layers(base, PROMPTS, [7, 15, 22], positions=LastK(3))
        pre = capture_layers(base, PROMPTS, [8, 16], site="resid_pre", positions=LastK(3))
        mid = capture_layers(base, PROMPTS, [15], site="resid_mid", positions=LastK(3))
    assert post[15].vectors.shape == (2, 3, 576)
    torch.testing.assert_close(post[7].vectors, pre[8].vectors)
    torch.testing.assert_close(post[15].vectors, pre[16].vectors)
    assert not torch.allclose(mid[15].vectors, post[15].vectors)


def test_injection_equals_a_plain_forward_hook(oracle: Any, plain: Any) -> None:
    from peft import PeftModel

    acts = oracle.capture(PROMPTS, 15, positions=__import__("lens_oracle").LastK(3))
    batch = oracle.encode([acts.example(i) for i in range(2)], [15, 15], QUESTIONS)
    with torch.no_grad(), oracle.adapter_disabled():
        ours = oracle.logits(batch)
    rows = [torch.nonzero(batch.placeholders[i]).flatten().tolist() for i in range(2)]
    vectors = [acts.example(i) for i in range(2)]

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        for row, positions in enumerate(rows):
            for k, p in enumerate(positions):
                h, v = hidden[row, p], vectors[row][k]
                hidden[row, p] = h + h.norm() * v / v.norm()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    assert not isinstance(plain, PeftModel)
    handle = plain.model.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            reference = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    finally:
        handle.remove()
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ours[mask], reference[mask], rtol=1e-4, atol=1e-4)


def test_lora_runs_and_a_few_steps_lower_the_loss(oracle: Any) -> None:
    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.lora import check_adapter_runs
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import batch_loss
    from lens_oracle.runner import train_oracle

    check_adapter_runs(oracle.model)
    fresh = ActivationOracle.create(FOLDER, adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0))
    tok = fresh.model.tokenizer
    words = ["apple", "river", "castle", "violin"]
    examples = []
    for word in words:
        ids = tuple(tok(f"I saw a {word}")["input_ids"])
        examples.append(OracleExample(ids, (len(ids) - 1,), 15, "What word is this?", word))
    with torch.no_grad():
        before = float(batch_loss(fresh, examples))
    train_oracle(fresh, examples, TrainConfig(learning_rate=1e-3, batch_size=4, epochs=6, warmup_fraction=0.0,
                                               progress=False))
    with torch.no_grad():
        after = float(batch_loss(fresh, examples))
    assert after < 0.8 * before, (before, after)


def test_save_load_round_trip(oracle: Any, tmp_path: Path) -> None:
    from lens_oracle.activations import LastK
    from lens_oracle.oracle import ActivationOracle

    oracle.save(tmp_path / "oracle")
    loaded = ActivationOracle.load(tmp_path / "oracle", FOLDER)
    acts = oracle.capture(PROMPTS, 15, positions=LastK(2))
    batch = oracle.encode([acts.example(i) for i in range(2)], [15, 15], QUESTIONS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(batch), oracle.logits(batch), rtol=1e-5, atol=1e-5)


def test_cached_generation_equals_uncached_with_injection(oracle: Any) -> None:
    from lens_oracle.activations import LastK
    from lens_oracle.doctor import greedy_without_cache

    acts = oracle.capture(PROMPTS, 15, positions=LastK(4))
    cached = oracle.ask_batch(acts, QUESTIONS, max_new_tokens=8)
    batch = oracle.encode([acts.example(i) for i in range(2)], [15, 15], QUESTIONS, padding_side="left")
    assert cached == greedy_without_cache(oracle, batch, 8)
    assert all(cached)


def test_the_base_model_answers_in_text(oracle: Any) -> None:
    from lens_oracle.generation import generate_text

    tok = oracle.model.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    with oracle.adapter_disabled() as base:
        answer = generate_text(base, [tok(prompt, add_special_tokens=False)["input_ids"]], 12, 1)[0]
    assert "Paris" in answer


def test_doctor_on_the_real_model(capsys: pytest.CaptureFixture[str]) -> None:
    from lens_oracle.cli import main

    assert main(["doctor", "--model", str(FOLDER)]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM, 30 blocks" in out and "all checks passed" in out


def test_patchscope_reads_word_identity_early_and_its_controls_do_not(tmp_path: Path, capsys) -> None:
    """Measured on 200 words (README): identity readable in early layers, gone late; zero and
    shuffled vectors never repeat the word. Here: 30 of those words, three layers, via the CLI."""
    import json

    from lens_oracle.cli import main

    assert main(["patchscope", "--model", str(FOLDER), "--words", "30", "--layers", "0,3,29", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    accuracy = json.loads((tmp_path / "patchscope.json").read_text())["accuracy"]
    assert accuracy["vector"][0] >= 0.3 and accuracy["vector"][1] >= 0.3
    assert max(accuracy["zero"] + accuracy["shuffled"]) <= 0.05
    assert accuracy["vector"][2] < accuracy["vector"][0]
    assert "| 3 |" in capsys.readouterr().out
