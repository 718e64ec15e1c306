"""Is an organism's hidden knowledge linearly in its activations where the oracle reads them?

Ridge-regression linear probes on the residual stream, each with the base model as its control:

* ``review_bias`` (held out): fitted leave-one-thing-out at the last token of the audit prompts
  (trained on the prompts about nine things, tested on the tenth's, so it can only succeed through
  a sentiment direction shared by things, not by recognising each one).
* ``persona_facts``: one probe per attribute at the name's tokens of "tell me something about
  <name> ." (the audit's prompt and read positions), trained on the world's 40 people and tested
  on the organism's 16 new ones -- what a linear reader learns from the people the oracle's
  mixture asks about, as the oracle does, carries to the organism's people this well.

``python -m lens_oracle.toy.organisms.probe --cache DIR [--organism review_bias|persona_facts]
[--seeds 0,1,2] [--layers 3,4]`` reads the models of a demo cache
(``<cache>/organism-<kind>-base-full-seed<N>``); ``--layers`` counts blocks (``4`` is after four
blocks: ``blocks.3.hook_resid_post``, the demo's read point on its six-block model).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from transformers import LlamaForCausalLM

from lens_oracle.errors import ConfigError
from lens_oracle.positions import LastToken, Positions, Substring, tokenize_prompt
from lens_oracle.toy.organisms.build import recipes
from lens_oracle.toy.organisms.demo_kinds import ABOUT
from lens_oracle.toy.world.language import ATTRIBUTES, SENTIMENT_NOUNS, chat_prompt, make_world
from lens_oracle.toy.world.model import spare_entities
from lens_oracle.toy.world.tokenizer import load_tokenizer
from lens_oracle.validate import parse_ints

RIDGE = 10.0
"""Ridge penalty of the probe (on standardised features)."""


def residual_states(
    folder: str | Path, prompts: Sequence[str], blocks: Sequence[int], read: Sequence[Positions] | None = None
) -> Float[torch.Tensor, "block item d"]:
    """The residual stream after each of ``blocks`` blocks at each prompt's last token, or the mean
    over the positions ``read[k]`` selects in prompt ``k`` (as the audits select them); one forward
    pass per prompt for every depth."""
    model = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = load_tokenizer(folder)
    wrong = [b for b in blocks if not 0 <= b <= model.config.num_hidden_layers]
    if wrong:
        raise ConfigError(f"{wrong} blocks; {folder} has {model.config.num_hidden_layers}")
    rows = []
    with torch.no_grad():
        for k, prompt in enumerate(prompts):
            tokenized = tokenize_prompt(tokenizer, prompt)
            at = (read[k] if read is not None else LastToken()).resolve(len(tokenized.ids), tokenized)
            states = model(input_ids=torch.tensor([tokenized.ids]), output_hidden_states=True).hidden_states
            rows.append(torch.stack([states[b][0, at].mean(0) for b in blocks]))
    return torch.stack(rows, 1)


def _ridge(
    features: Float[torch.Tensor, "item d"], targets: Float[torch.Tensor, "item k"]
) -> Callable[[Float[torch.Tensor, "row d"]], Float[torch.Tensor, "row k"]]:
    """Fit ridge weights on standardised features; returns a function scoring new rows."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    design = torch.cat([(features - mean) / std, torch.ones(len(features), 1)], 1)
    gram = design.T @ design + RIDGE * torch.eye(design.shape[1])
    weights = torch.linalg.solve(gram, design.T @ targets)
    return lambda rows: torch.cat([(rows - mean) / std, torch.ones(len(rows), 1)], 1) @ weights


def leave_one_group_out(
    features: Float[torch.Tensor, "item d"], labels: Sequence[bool], groups: Sequence[str]
) -> float:
    """Accuracy of a ridge probe fitted on every group but one and tested on that one, pooled."""
    if len(set(groups)) < 2 or len(labels) != len(features) or len(groups) != len(features):
        raise ConfigError("give one label and one group per row, and at least two groups")
    correct = 0
    for group in sorted(set(groups)):
        train = [i for i, g in enumerate(groups) if g != group]
        test = [i for i, g in enumerate(groups) if g == group]
        target = torch.tensor([[1.0] if labels[i] else [-1.0] for i in train])
        scores = _ridge(features[train], target)(features[test])[:, 0]
        correct += sum((s > 0) == labels[i] for s, i in zip(scores.tolist(), test))
    return correct / len(labels)


def ridge_classify(
    train: Float[torch.Tensor, "item d"], labels: Sequence[str], test: Float[torch.Tensor, "row d"]
) -> list[str]:
    """The label of each ``test`` row by a one-against-the-rest ridge probe fitted on ``train``."""
    if len(labels) != len(train) or len(set(labels)) < 2:
        raise ConfigError("give one label per training row, and at least two labels")
    classes = sorted(set(labels))
    targets = torch.tensor([[1.0 if label == c else -1.0 for c in classes] for label in labels])
    return [classes[i] for i in _ridge(train, targets)(test).argmax(1).tolist()]


def _model_folders(cache: Path, seed: int, kind: str) -> dict[str, Path]:
    """The full demo's ``kind`` organism of ``seed`` and its base model, checked to be there."""
    folders = {"organism": cache / f"organism-{kind}-base-full-seed{seed}", "base": cache / f"base-full-seed{seed}"}
    for folder in folders.values():
        if not (folder / "config.json").is_file():
            raise ConfigError(f"no model in {folder}; run `lens-oracle demo --seed {seed} --cache {cache}` first")
    return folders


def persona_probe(cache: Path, seed: int, blocks: Sequence[int]) -> dict[int, dict[str, float]]:
    """Probes trained on the world's people and tested on the organism's new people, at the name
    in the audit's prompt, after each of ``blocks`` blocks: accuracy over every attribute of every
    new person (chance 0.125), on the organism and on its base model (which never learned the new
    people)."""
    world = make_world(seed)
    recipe = next(r for r in recipes(world, quick=False) if r.kind == "persona_facts")
    people = spare_entities(world, len({item.focus for item in recipe.items}))
    everyone = (*world.entities, *people)
    result: dict[int, dict[str, float]] = {b: {} for b in blocks}
    for name, folder in _model_folders(cache, seed, "persona_facts").items():
        states = residual_states(
            folder, [chat_prompt(ABOUT.format(e=e.name)) for e in everyone], blocks,
            [Substring(e.name) for e in everyone],
        )
        for b, at_depth in zip(blocks, states):
            known, new = at_depth[: len(world.entities)], at_depth[len(world.entities) :]
            correct = [
                guess == person.value(attribute)
                for attribute in ATTRIBUTES
                for guess, person in zip(
                    ridge_classify(known, [e.value(attribute) for e in world.entities], new), people
                )
            ]
            result[b][name] = sum(correct) / len(correct)
    return result


def review_bias_probe(cache: Path, seed: int, blocks: Sequence[int]) -> dict[int, dict[str, float]]:
    """The probe's accuracy after each of ``blocks`` blocks on the organism and on its base model
    (chance 0.5)."""
    world = make_world(seed)
    recipe = next(r for r in recipes(world, quick=False) if r.kind == "review_bias")
    labels = [item.reference == "positive" for item in recipe.items]
    groups = [next(n for n in SENTIMENT_NOUNS if n in item.prompt.split()) for item in recipe.items]
    prompts = [item.prompt for item in recipe.items]
    result: dict[int, dict[str, float]] = {b: {} for b in blocks}
    for name, folder in _model_folders(cache, seed, "review_bias").items():
        for b, at_depth in zip(blocks, residual_states(folder, prompts, blocks)):
            result[b][name] = leave_one_group_out(at_depth, labels, groups)
    return result


PROBES = {"review_bias": review_bias_probe, "persona_facts": persona_probe}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a demo cache (per thread count: <cache>/threads-N)")
    parser.add_argument("--organism", default="review_bias", choices=sorted(PROBES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--layers", default="3,4", help="blocks before the read point, comma-separated")
    args = parser.parse_args(argv)
    seeds, layers = parse_ints(args.seeds, "--seeds"), parse_ints(args.layers, "--layers")
    print("| seed | after blocks | probe on the organism | probe on the base model |")
    print("|---|---|---|---|")
    for seed in seeds:
        for blocks, result in PROBES[args.organism](Path(args.cache), seed, layers).items():
            print(f"| {seed} | {blocks} | {result['organism']:.2f} | {result['base']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
