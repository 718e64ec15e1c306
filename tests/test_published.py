"""The AO authors' multi-layer adapters: a plain PEFT folder with their JSON sidecar loads with its
read layers and placeholder, is prompted layer by layer, and a sidecar we cannot honour is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import build_llama

from lens_oracle import ActivationOracle, LastK
from lens_oracle.errors import ArtifactError, ConfigError
from lens_oracle.prompt import oracle_user_text
from lens_oracle.published import PREFIX_TEMPLATE, read_sidecar

# As their training code writes it: the prefix template with escaped newlines (a description of
# the prompt, not a format string), the layers in prompt order, depth percents beside them.
SIDECAR = {
    "model_name": "someone/tiny-llama",
    "layer_percents": [25, 75],
    "act_layers": [1, 3],
    "order": "layer_major",
    "special_token": " ?",
    "prefix_template": "Layer: {layer}\\n{special_token} * {num_positions} \\n",
}


@pytest.fixture()
def published(tokenizer, tmp_path: Path) -> Path:
    """A plain PEFT adapter folder (no oracle_config.json) with an ``mlao_config.json`` beside it."""
    from peft import LoraConfig, get_peft_model

    plain = get_peft_model(
        build_llama(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    folder = tmp_path / "mlao"
    plain.save_pretrained(str(folder))
    (folder / "mlao_config.json").write_text(json.dumps(SIDECAR, indent=2))
    return folder


def test_the_sidecar_gives_layers_and_placeholder(published: Path, tokenizer) -> None:
    sidecar = read_sidecar(published)
    assert sidecar is not None
    assert (sidecar.act_layers, sidecar.layer_percents, sidecar.placeholder) == ((1, 3), (25, 75), " ?")
    assert SIDECAR["prefix_template"].replace("\\n", "\n") == PREFIX_TEMPLATE
    oracle = ActivationOracle.load(published, build_llama(tokenizer), tokenizer)
    assert oracle.config.read_layers == (1, 3)
    assert oracle.config.prompt.placeholder == " ?"


def test_a_published_multi_layer_adapter_is_prompted_layer_by_layer(published: Path, tokenizer, tmp_path: Path) -> None:
    oracle = ActivationOracle.load(published, build_llama(tokenizer), tokenizer)
    records = oracle.capture_layers(["w1 red w2 blue"], positions=LastK(2))
    assert [r.layer for r in records] == [1, 3]
    with oracle.adapter_disabled() as base:
        from lens_oracle import capture

        expected = [capture(base, ["w1 red w2 blue"], layer, positions=LastK(2)).vectors for layer in (1, 3)]
    for record, vectors in zip(records, expected, strict=True):
        torch.testing.assert_close(record.vectors, vectors, rtol=0, atol=0)
    vectors = torch.cat([r.example(0) for r in records])  # layer-major: both positions at 1, then at 3
    batch = oracle.encode([vectors], [(1, 3)], ["what colour ?"])
    # the authors' prefix, once per layer, then the question (the tiny word-level tokenizer drops
    # newlines and case, so the ids are checked against the text our prompt module writes)
    expected_text = "Layer: 1\n ? ? \nLayer: 3\n ? ? \nwhat colour ?"
    assert oracle_user_text((1, 3), 4, "what colour ?", oracle.config.prompt.placeholder) == expected_text
    assert "layer : 1 ? ? layer : 3 ? ? what colour ?" in tokenizer.decode(batch.input_ids[0])
    assert batch.vector_layers.tolist() == [[1, 1, 3, 3]]
    answer = oracle.ask(records, "what colour ?", max_new_tokens=3)
    assert isinstance(answer, str)
    # saved by us, the layers travel in oracle_config.json
    oracle.save(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "oracle_config.json").read_text())["read_layers"] == [1, 3]
    again = ActivationOracle.load(tmp_path / "ours", build_llama(tokenizer), tokenizer)
    assert again.config.read_layers == (1, 3)


def test_without_recorded_layers_capture_layers_asks_for_them(tokenizer, tmp_path: Path) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer)
    with pytest.raises(ConfigError, match="no read layers; pass layers"):
        oracle.capture_layers(["w1 red"])
    assert [r.layer for r in oracle.capture_layers(["w1 red"], [2, -1])] == [2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"order": "position_major"}, "layer-major"),
        ({"prefix_template": "L{layer}: {special_token} * {num_positions}\\n"}, "not the Activation Oracles prefix"),
        ({"act_layers": [1, 1]}, "distinct non-negative"),
        ({"act_layers": "1,3"}, "list of integers"),
        ({"layer_percents": [25]}, "1 layer_percents for 2 act_layers"),
        ({"special_token": ""}, "non-empty text"),
    ],
)
def test_a_sidecar_we_cannot_honour_is_refused(published: Path, change: dict, message: str) -> None:
    (published / "mlao_config.json").write_text(json.dumps({**SIDECAR, **change}))
    with pytest.raises(ArtifactError, match=message):
        read_sidecar(published)


def test_layers_the_base_model_lacks_and_broken_folders_are_refused(published: Path, tokenizer) -> None:
    (published / "mlao_config.json").write_text(json.dumps({**SIDECAR, "act_layers": [1, 9], "layer_percents": [25, 200]}))
    with pytest.raises(ArtifactError, match=r"does not fit .*read_layers \[1, 9\]"):
        ActivationOracle.load(published, build_llama(tokenizer), tokenizer)
    (published / "mlao_config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ActivationOracle.load(published, build_llama(tokenizer), tokenizer)
    (published / "mlao_config.json").write_text(json.dumps(SIDECAR))
    (published / "ao_config.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(ArtifactError, match="holds both"):
        ActivationOracle.load(published, build_llama(tokenizer), tokenizer)
