"""The projector (cross-model oracles): config, shapes, save/load, mismatch errors, multi-layer
prompts and examples, and loading oracle configs written before projectors existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import build_llama

from lens_oracle.activations import capture_layers, read_vectors
from lens_oracle.config import (
    CONFIG_VERSION,
    AdapterConfig,
    InjectionConfig,
    OracleConfig,
    ProjectorConfig,
    TrainConfig,
)
from lens_oracle.data.example import OracleExample, read_jsonl, write_jsonl
from lens_oracle.errors import (
    ActivationError,
    ArtifactError,
    ConfigError,
    DataError,
    EvalError,
    PromptError,
    TrainingError,
)
from lens_oracle.evals.targets import Target, check_target
from lens_oracle.inject import placeholder_mask
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.projector import (
    NO_LAYER,
    PROJECTOR_WEIGHTS,
    Projector,
    projector_config,
    vector_layers,
)
from lens_oracle.prompt import encode_oracle_prompt, layer_groups, oracle_user_text
from lens_oracle.train import Trainer
from lens_oracle.runner import train_oracle

SOURCE_D, ORACLE_D = 48, 64
ADAPTER = AdapterConfig(rank=4, alpha=8, dropout=0.0)


def source_config(**changes: object) -> ProjectorConfig:
    fields: dict[str, object] = {
        "source_model": "src", "source_architecture": "LlamaForCausalLM",
        "source_d_model": SOURCE_D, "source_n_layers": 3,
    }
    return ProjectorConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def models(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    source = load_model(build_llama(tok, d_model=SOURCE_D, n_layers=3, seed=1), tok, name="src")
    return tok, source


def cross_oracle(tok, source, **kwargs) -> ActivationOracle:
    return ActivationOracle.create(
        build_llama(tok), tok, name="orc", adapter=ADAPTER, injection=InjectionConfig(layer=1),
        projector=projector_config(source, (1, 2), **kwargs),
    )


# ---------------------------------------------------------------- config and shapes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shared": False}, "needs its layers"),
        ({"layers": (3,)}, "must be distinct blocks"),
        ({"layers": (1, 1)}, "must be distinct blocks"),
        ({"hidden": 32}, "kind='mlp' only"),
        ({"source_d_model": 0}, "source_d_model must be a positive integer"),
    ],
)
def test_projector_config_refuses_bad_values(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        source_config(**changes)


def test_projector_config_round_trips_through_oracle_config() -> None:
    config = OracleConfig("orc", "LlamaForCausalLM", 64, 4, projector=source_config(layers=(0, 2), kind="mlp"))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == CONFIG_VERSION == 2
    assert data["projector"]["layers"] == [0, 2]
    assert OracleConfig.from_json_dict(data) == config


def test_linear_and_mlp_shapes() -> None:
    x = torch.randn(2, 3, SOURCE_D)
    layers = torch.tensor([[1, 1, NO_LAYER], [2, 2, 2]])
    linear = Projector(source_config(), ORACLE_D)
    assert linear(x, layers).shape == (2, 3, ORACLE_D)
    assert [tuple(p.shape) for p in linear.parameters()] == [(ORACLE_D, SOURCE_D), (ORACLE_D,)]
    mlp = Projector(source_config(kind="mlp", hidden=20), ORACLE_D)
    assert mlp(x, layers).shape == (2, 3, ORACLE_D)
    assert [tuple(p.shape) for p in mlp.parameters()] == [(20, SOURCE_D), (20,), (ORACLE_D, 20), (ORACLE_D,)]
    default_hidden = Projector(source_config(kind="mlp"), ORACLE_D)
    assert default_hidden.maps[0][0].out_features == max(SOURCE_D, ORACLE_D)


def test_shared_projector_is_one_linear_map() -> None:
    projector = Projector(source_config(), ORACLE_D, seed=3)
    x = torch.randn(2, 4, SOURCE_D)
    out = projector(x, torch.zeros(2, 4, dtype=torch.long))
    linear = projector.maps[0]
    torch.testing.assert_close(out, x @ linear.weight.T + linear.bias, rtol=0, atol=1e-6)
    assert torch.equal(Projector(source_config(), ORACLE_D, seed=3).maps[0].weight, linear.weight)
    assert not torch.equal(Projector(source_config(), ORACLE_D, seed=4).maps[0].weight, linear.weight)


def test_per_layer_projector_uses_each_layers_map() -> None:
    projector = Projector(source_config(shared=False, layers=(0, 2)), ORACLE_D)
    x = torch.randn(1, 4, SOURCE_D)
    out = projector(x, torch.tensor([[0, 2, 2, NO_LAYER]]))
    assert torch.equal(out[0, 0], projector.maps[0](x[0, 0]))
    assert torch.equal(out[0, 1:3], projector.maps[1](x[0, 1:3]))
    assert torch.equal(out[0, 3], torch.zeros(ORACLE_D))  # padding slot
    projector.check_layers([0, 2])
    with pytest.raises(ActivationError, match=r"not for \[1\]"):
        projector.check_layers([0, 1])
    Projector(source_config(), ORACLE_D).check_layers([0, 1, 2])  # shared: any layer


def test_rms_norm_makes_the_projection_scale_invariant() -> None:
    projector = Projector(source_config(norm="rms"), ORACLE_D)
    x = torch.randn(1, 2, SOURCE_D)
    layers = torch.zeros(1, 2, dtype=torch.long)
    torch.testing.assert_close(projector(x * 7.5, layers), projector(x, layers), rtol=1e-5, atol=1e-5)


def test_vector_layers_split_each_example_evenly() -> None:
    tags = vector_layers([1, (1, 2), (0, 1, 2)], [2, 4, 3], 4)
    assert tags.tolist() == [[1, 1, -1, -1], [1, 1, 2, 2], [0, 1, 2, -1]]


# ---------------------------------------------------------------- multi-layer prompts


def test_multi_layer_prompt_text() -> None:
    assert oracle_user_text(5, 2, "q") == "Layer: 5\n ? ? \nq"  # one layer: the AO text
    assert oracle_user_text((2, 4), 4, "q") == "Layer: 2\n ? ? \nLayer: 4\n ? ? \nq"
    assert oracle_user_text((1, 2, 3), 3, "q", " @") == "Layer: 1\n @ \nLayer: 2\n @ \nLayer: 3\n @ \nq"
    assert layer_groups((2, 4), 6) == ((2, 3), (4, 3))
    with pytest.raises(PromptError, match="do not split evenly"):
        oracle_user_text((2, 4), 3, "q")
    with pytest.raises(PromptError, match="at least one layer tag"):
        layer_groups((), 2)


def test_multi_layer_prompt_tokens_and_mask(models) -> None:
    tok, source = models
    oracle = cross_oracle(tok, source)
    encoded = encode_oracle_prompt(tok, oracle.config.prompt, (1, 2), 4, "what colour is here ?", "red")
    words = tok.convert_ids_to_tokens(list(encoded.input_ids))
    start = words.index("layer")
    assert words[start : start + 12] == ["layer", ":", "1", "?", "?", "layer", ":", "2", "?", "?", "what", "colour"]
    vectors = [torch.randn(4, SOURCE_D), torch.randn(2, SOURCE_D)]
    batch = oracle.encode(vectors, [(1, 2), 2], ["what ?", "what ?"])
    first = int(batch.input_ids[0].tolist().index(oracle.placeholder_id))
    marked = batch.placeholders[0].nonzero().flatten().tolist()
    assert marked == [first, first + 1, first + 5, first + 6]
    assert batch.placeholders[1].sum() == 2
    assert batch.vector_layers.tolist() == [[1, 1, 2, 2], [2, 2, -1, -1]]
    with pytest.raises(PromptError, match=r"runs of lengths \[2, 2\], expected \[3, 1\]"):
        placeholder_mask(batch.input_ids[:1], oracle.placeholder_id, batch.counts[:1], [[3, 1]])


def test_read_vectors_with_layer_tuples_concatenates_layers(models) -> None:
    tok, source = models
    ids = [tok("w1 red w2 w3")["input_ids"], tok("gold w4")["input_ids"]]
    positions = [[1, 2], [1]]
    both = read_vectors(source, ids, positions, [(1, 2), (2, 0)])
    one = {layer: read_vectors(source, ids, positions, [layer, layer]) for layer in (0, 1, 2)}
    assert torch.equal(both[0], torch.cat([one[1][0], one[2][0]]))
    assert torch.equal(both[1], torch.cat([one[2][1], one[0][1]]))


def test_multi_layer_example_round_trips_and_old_rows_stay_identical(tmp_path: Path) -> None:
    old = OracleExample((1, 5, 6), (2,), 1, "q ?", "yes")
    multi = OracleExample((1, 5, 6), (2,), 1, "q ?", "yes", extra_layers=(2, 3))
    assert "extra_layers" not in old.to_dict() and old.layer_tag == 1
    assert multi.read_layers == (1, 2, 3) and multi.layer_tag == (1, 2, 3)
    path = write_jsonl([old, multi], tmp_path / "ex.jsonl")
    assert list(read_jsonl(path)) == [old, multi]
    assert json.loads(path.read_text().splitlines()[1])["extra_layers"] == [2, 3]
    with pytest.raises(DataError, match="reads a layer twice"):
        OracleExample((1, 5), (1,), 1, "q", "a", extra_layers=(1,))
    with pytest.raises(DataError, match="integers only"):
        OracleExample.from_dict({**old.to_dict(), "extra_layers": ["2"]})


# ---------------------------------------------------------------- the oracle with a projector


def test_oracle_parameters_and_freezing(models) -> None:
    tok, source = models
    oracle = cross_oracle(tok, source)
    names = oracle.named_trainable_parameters()
    assert {"projector.maps.0.weight", "projector.maps.0.bias"} <= set(names)
    assert any("lora_A" in n for n in names)
    oracle.set_trainable(adapter=False)
    assert sorted(oracle.named_trainable_parameters()) == ["projector.maps.0.bias", "projector.maps.0.weight"]
    oracle.set_trainable(adapter=True, projector=False)
    assert not any(n.startswith("projector.") for n in oracle.named_trainable_parameters())
    with pytest.raises(TrainingError, match="reader=target_reader"):
        Trainer(oracle, TrainConfig(progress=False))


def test_save_load_round_trip_is_exact(models, tmp_path: Path) -> None:
    tok, source = models
    oracle = cross_oracle(tok, source, kind="mlp", hidden=16, norm="rms")
    with torch.no_grad():
        for param in oracle.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.1)
    oracle.save(tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "oracle_config.json", PROJECTOR_WEIGHTS,
    ]
    again = ActivationOracle.load(tmp_path / "o", build_llama(tok), tok)
    assert again.config == oracle.config and again.config.projector.kind == "mlp"
    saved, loaded = oracle.projector.state_dict(), again.projector.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    vectors = read_vectors(source, [tok("w1 red w2")["input_ids"]], [[2]], [(1, 2)])
    vectors = [vectors[0]]
    batch = oracle.encode(vectors, [(1, 2)], ["what colour is here ?"])
    with torch.no_grad():
        assert torch.equal(oracle.logits(batch), again.logits(batch))
    assert not any(p.requires_grad for p in again.projector.parameters())  # trainable=False


def test_loading_refuses_projector_files_that_do_not_fit(models, tmp_path: Path) -> None:
    tok, source = models
    cross_oracle(tok, source).save(tmp_path / "o")

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tmp_path / "o", tmp_path / name))

    missing = copy("missing")
    (missing / PROJECTOR_WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="projector.safetensors is missing"):
        ActivationOracle.load(missing, build_llama(tok), tok)
    widened = copy("widened")
    data = json.loads((widened / "oracle_config.json").read_text())
    data["projector"]["source_d_model"] = 40
    (widened / "oracle_config.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="does not fit its config"):
        ActivationOracle.load(widened, build_llama(tok), tok)
    orphan = copy("orphan")
    data = json.loads((orphan / "oracle_config.json").read_text())
    data["projector"] = None
    (orphan / "oracle_config.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="names no projector"):
        ActivationOracle.load(orphan, build_llama(tok), tok)


def test_old_oracle_config_without_projector_loads(tokenizer, tmp_path: Path) -> None:
    oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=ADAPTER)
    oracle.save(tmp_path / "o")
    path = tmp_path / "o" / "oracle_config.json"
    data = json.loads(path.read_text())
    del data["projector"]
    data["version"] = 1  # exactly what lens_oracle wrote before projectors existed
    path.write_text(json.dumps(data))
    again = ActivationOracle.load(tmp_path / "o", build_llama(tokenizer), tokenizer)
    assert again.projector is None and again.config.projector is None
    assert again.config.version == 1 and again.input_d_model == 64


def test_width_and_source_mismatches_are_clear_errors(models, tokenizer) -> None:
    tok, source = models
    oracle = cross_oracle(tok, source)
    with pytest.raises(ActivationError, match="projector reads 'src' activations of d_model 48"):
        oracle.encode([torch.randn(1, ORACLE_D)], [1], ["q ?"])
    plain = ActivationOracle.create(build_llama(tok), tok, adapter=ADAPTER)
    with pytest.raises(ActivationError, match="need a projector"):
        plain.encode([torch.randn(1, SOURCE_D)], [1], ["q ?"])
    other = load_model(build_llama(tok, d_model=32, n_layers=3, seed=2), tok, name="other")
    with pytest.raises(ActivationError, match="but the source given is 'other'"):
        oracle.projector.check_source(other)
    example = OracleExample(tuple(tok("w1 red")["input_ids"]), (2,), 1, "what colour is here ?", "red")
    with pytest.raises(ActivationError, match="d_model 32, 3 blocks"):
        train_oracle(oracle, [example], TrainConfig(progress=False), source=other)
    with pytest.raises(EvalError, match="but the source given is 'other'"):
        check_target(oracle, Target(other))
    per_layer = cross_oracle(tok, source, shared=False)
    with pytest.raises(ActivationError, match=r"not for \[0\]"):
        per_layer.encode([torch.randn(2, SOURCE_D)], [(0, 1)], ["q ?"])
    with pytest.raises(DataError, match="reads layer 3, but the model it reads has 3 blocks"):
        train_oracle(oracle, [OracleExample((1, 2), (1,), 3, "q", "a")], source=source)


def test_multi_layer_activations_records_ask(models) -> None:
    tok, source = models
    oracle = cross_oracle(tok, source)
    by_layer = capture_layers(source, ["w1 red w2", "gold"], [1, 2])
    answers = oracle.ask_batch(list(by_layer.values()), "what colour is here ?", max_new_tokens=2)
    assert len(answers) == 2
    vectors, tags = oracle._unpack(list(by_layer.values()), None)
    assert tags == [(1, 2), (1, 2)] and vectors[0].shape == (2, SOURCE_D)
    shorter = capture_layers(source, ["w1 red w2"], [2])[2]
    with pytest.raises(ActivationError, match="same prompts and positions"):
        oracle.ask_batch([by_layer[1], shorter], "what ?")


def test_with_projector_shares_the_model_and_capture_points_to_the_source(models) -> None:
    tok, source = models
    plain = ActivationOracle.create(build_llama(tok), tok, adapter=ADAPTER)
    cross = plain.with_projector(projector_config(source, (1,)), seed=1)
    assert cross.model is plain.model and plain.projector is None
    assert (cross.input_d_model, plain.input_d_model) == (SOURCE_D, ORACLE_D)
    assert cross.config.projector.source_model == "src" and cross.config.adapter == plain.config.adapter
    with pytest.raises(ActivationError, match="capture with lens_oracle.capture"):
        cross.capture(["w1 red"], 1)
    with pytest.raises(ConfigError, match="has no projector"):
        plain.set_trainable(projector=True)
