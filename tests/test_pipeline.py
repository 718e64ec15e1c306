"""The core pipeline on tiny random Llama models: capture, AO equivalence, adapters, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import build_llama
from lens_oracle.activations import (
    AllTokens,
    Indices,
    LastK,
    LastToken,
    Segment,
    Substring,
    capture,
    capture_layers,
)
from lens_oracle.config import AdapterConfig, InjectionConfig, OracleConfig
from lens_oracle.errors import ArtifactError, HookError, PositionError, PromptError
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.prompt import encode_oracle_prompt, oracle_user_text

PROMPTS = ["w1 red w2", "w3 w4 blue w5 w6 w7", "gold"]


def ao_reference_logits(model, ids, mask, vectors_by_row, placeholder_rows, layers=None):
    """Plain PyTorch: a forward hook on model.model.layers[1] applying the AO formula."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        for row, positions in enumerate(placeholder_rows):
            for k, p in enumerate(positions):
                h = hidden[row, p]
                v = vectors_by_row[row][k]
                hidden[row, p] = h + h.norm() * v / v.norm()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = model.model.layers if layers is None else layers
    handle = layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()


def test_ao_prompt_text_matches_reference() -> None:
    assert oracle_user_text(12, 3, "What is the secret word in this text?") == (
        "Layer: 12\n ? ? ? \nWhat is the secret word in this text?"
    )


def test_capture_matches_run_with_cache_and_stops_early(tokenizer) -> None:
    model = load_model(build_llama(tokenizer), tokenizer)
    ran: list[str] = []
    with model.bridge.hooks(fwd_hooks=[("blocks.3.hook_resid_pre", lambda x, hook: ran.append("3") or x)]):
        acts = capture(model, PROMPTS, 1, positions=LastToken())
    assert ran == []  # blocks after the read layer never run
    assert acts.vectors.shape == (3, 1, 64)
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        _, cache = model.bridge.run_with_cache(ids)
        torch.testing.assert_close(acts.example(i)[0], cache["blocks.1.hook_resid_post"][0, -1], rtol=1e-4, atol=1e-4)
    pre = capture(model, PROMPTS[:1], 2, site="resid_pre")
    torch.testing.assert_close(pre.vectors, acts.vectors[:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_capture_equals_each_prompt_alone(tokenizer, padding_side) -> None:
    model = load_model(build_llama(tokenizer), tokenizer)
    batched = capture_layers(model, PROMPTS, [0, 2], positions=AllTokens(), padding_side=padding_side)
    for layer in (0, 2):
        for i, prompt in enumerate(PROMPTS):
            alone = capture(model, [prompt], layer, positions=AllTokens())
            torch.testing.assert_close(batched[layer].example(i), alone.example(0), rtol=1e-4, atol=1e-4)


def test_position_selectors(tokenizer) -> None:
    model = load_model(build_llama(tokenizer), tokenizer)
    prompt = "w1 w2 red blue w3"  # tokens: <bos> w1 w2 red blue w3
    cases = {
        LastToken(): (5,),
        LastK(2): (4, 5),
        Segment(1, 3): (1, 2),
        Segment(-2): (4, 5),
        AllTokens(): (0, 1, 2, 3, 4, 5),
        AllTokens(skip_special=True): (1, 2, 3, 4, 5),
        Indices((0, -1)): (0, 5),
        Substring("red blue"): (3, 4),
        Substring("w"): (1,),
        Substring("w", occurrence=2): (5,),
        Substring("red", through_end=True): (3, 4, 5),
        Substring("w2", through_end=True): (2, 3, 4, 5),
    }
    for selector, expected in cases.items():
        assert capture(model, prompt, 1, positions=selector).positions == (expected,), selector


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"positions": Substring("purple")}, PositionError, "not found"),
        ({"positions": Indices((9,))}, PositionError, "out of range"),
        ({"positions": Segment(4, 2)}, PositionError, "empty"),
    ],
)
def test_capture_errors(tokenizer, kwargs, error, phrase) -> None:
    model = load_model(build_llama(tokenizer), tokenizer)
    with pytest.raises(error, match=phrase):
        capture(model, "w1 red", 1, **kwargs)


def test_capture_layer_out_of_range(tokenizer) -> None:
    model = load_model(build_llama(tokenizer), tokenizer)
    with pytest.raises(HookError, match="unknown hook site 'resid_middle'"):
        model.hook_name(1, "resid_middle")
    with pytest.raises(HookError, match="out of range .* choose 0..3"):
        capture(model, "w1 red", 4)


def test_ao_injection_equals_plain_pytorch_hook(tokenizer) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    assert oracle.injection_hook == "blocks.2.hook_resid_pre"
    torch.manual_seed(1)
    vectors = [torch.randn(2, 64), torch.randn(3, 64)]
    batch = oracle.encode(vectors, [1, 2], ["what colour ?", "what is here ?"])
    with torch.no_grad():
        ours = oracle.logits(batch)
    rows = [batch.placeholders[r].nonzero().flatten().tolist() for r in range(2)]
    reference = ao_reference_logits(build_llama(tokenizer), batch.input_ids, batch.attention_mask, vectors, rows)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert (oracle.logits(batch, inject=False) - ours).abs().max() > 1e-2


def test_adapter_saved_by_plain_peft_loads_and_matches(tokenizer, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    plain = get_peft_model(
        build_llama(tokenizer),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    plain.save_pretrained(str(tmp_path / "ao"))
    oracle = ActivationOracle.load(tmp_path / "ao", build_llama(tokenizer), tokenizer)
    assert oracle.config.injection == InjectionConfig()  # the AO preset
    vectors = [torch.randn(3, 64)]
    batch = oracle.encode(vectors, [2], ["what colour ?"])
    with torch.no_grad():
        ours = oracle.logits(batch)
    rows = [batch.placeholders[0].nonzero().flatten().tolist()]
    reference = ao_reference_logits(
        plain, batch.input_ids, batch.attention_mask, vectors, rows, layers=plain.base_model.model.model.layers
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_adapter_off_is_the_base_model(tokenizer) -> None:
    from peft import LoraConfig, get_peft_model  # noqa: F401  (PEFT must be importable)

    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    base = build_llama(tokenizer)
    ids = torch.tensor([tokenizer("w1 red w2 blue")["input_ids"]])
    with torch.no_grad():
        expected = base(ids).logits
    # Train a few steps so the adapter is non-trivial, then check again.
    for step in range(2):
        with oracle.adapter_disabled() as model, torch.no_grad():
            torch.testing.assert_close(model.logits(ids), expected, rtol=0, atol=1e-6)
        if step == 0:
            _train_a_little(oracle, tokenizer)
            with torch.no_grad():
                assert (oracle.model.logits(ids) - expected).abs().max() > 1e-3


def _train_a_little(oracle, tokenizer) -> None:
    from helpers import colour_task
    from lens_oracle.config import TrainConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.runner import train_oracle

    examples = [
        OracleExample(tuple(ids), (p,), 1, "what colour ?", c) for ids, p, c in colour_task(tokenizer, 32, 0)
    ]
    train_oracle(oracle, examples, TrainConfig(learning_rate=1e-2, batch_size=8, progress=False))


def test_save_load_in_fresh_process_reproduces_answers(tokenizer, tokenizer_dir: Path, tmp_path: Path) -> None:
    model = build_llama(tokenizer)
    model.save_pretrained(str(tmp_path / "base"))
    oracle = ActivationOracle.create(tmp_path / "base", tokenizer_dir, adapter=AdapterConfig(rank=4, alpha=8))
    _train_a_little(oracle, tokenizer)
    acts = oracle.capture(PROMPTS, 1, positions=LastK(2))
    answers = oracle.ask_batch(acts, "what colour ?", max_new_tokens=6)
    oracle.save(tmp_path / "oracle")
    assert sorted(p.name for p in (tmp_path / "oracle").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "oracle_config.json",
    ]
    script = textwrap.dedent(
        f"""
        import json
        from lens_oracle.activations import LastK
        from lens_oracle.oracle import ActivationOracle
        oracle = ActivationOracle.load({str(tmp_path / 'oracle')!r}, tokenizer={str(tokenizer_dir)!r})
        acts = oracle.capture({PROMPTS!r}, 1, positions=LastK(2))
        print(json.dumps(oracle.ask_batch(acts, "what colour ?", max_new_tokens=6)))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == answers


def test_saved_keys_are_clean(tokenizer, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    oracle.save(tmp_path / "o")
    keys = list(load_file(str(tmp_path / "o" / "adapter_model.safetensors")))
    assert keys and not [k for k in keys if "_original_component" in k]
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys


def test_batched_generation_equals_one_at_a_time(tokenizer) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    _train_a_little(oracle, tokenizer)
    acts = oracle.capture(PROMPTS, 1, positions=AllTokens())  # 4, 7 and 2 vectors
    questions = ["what colour ?", "what is here ?", "what colour is the answer ?"]
    batched = oracle.ask_batch(acts, questions, max_new_tokens=8)
    single = [oracle.ask(acts.select([i]), q, max_new_tokens=8) for i, q in enumerate(questions)]
    assert batched == single
    assert len(set(batched)) > 1 or batched[0] != ""


def test_encode_labels_cover_only_the_answer(tokenizer) -> None:
    from lens_oracle.config import PromptConfig

    encoded = encode_oracle_prompt(tokenizer, PromptConfig(), 3, 2, "what colour ?", "red")
    tokens = tokenizer.convert_ids_to_tokens(list(encoded.input_ids))
    assert tokens == [
        "<user>", "layer", ":", "3", "?", "?", "what", "colour", "?", "<end>", "<assistant>", "red", "<end>",
    ]
    supervised = [t for t, label in zip(tokens, encoded.labels) if label != -100]
    assert supervised == ["red", "<end>"]


def test_oracle_dimension_mismatch_is_clear(tokenizer) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    with pytest.raises(Exception, match=r"expects \[n_vec, 64\].*projector"):
        oracle.ask_batch([torch.randn(1, 32)], "what ?", layers=[1])


def test_plain_format_needs_no_chat_template(tmp_path: Path) -> None:
    from helpers import build_tokenizer
    from lens_oracle.config import PromptConfig

    plain_tok = build_tokenizer(tmp_path / "plain", chat=False)
    with pytest.raises(PromptError, match="chat template"):
        encode_oracle_prompt(plain_tok, PromptConfig(), 1, 1, "what ?", "red")
    encoded = encode_oracle_prompt(plain_tok, PromptConfig(format="plain"), 1, 1, "what ?", "red")
    assert plain_tok.convert_ids_to_tokens(list(encoded.input_ids)) == [
        "<bos>", "layer", ":", "1", "?", "what", "?", "red", "<end>",
    ]


def test_newer_oracle_config_is_refused(tokenizer, tmp_path: Path) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8))
    oracle.save(tmp_path / "o")
    path = tmp_path / "o" / "oracle_config.json"
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="newer than this lens_oracle"):
        ActivationOracle.load(tmp_path / "o", build_llama(tokenizer), tokenizer)


def test_config_round_trip() -> None:
    config = OracleConfig(base_model="m", architecture="LlamaForCausalLM", d_model=64, n_layers=4,
                          adapter=AdapterConfig(rank=8, target_modules=("q_proj", "v_proj")))
    assert OracleConfig.from_json_dict(json.loads(json.dumps(config.to_dict()))) == config
