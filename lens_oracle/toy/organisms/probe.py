"""Is a held-out organism's hidden opinion in its activations where the oracle reads them?

A ridge-regression linear probe, fitted leave-one-thing-out on the ``review_bias`` organism's
residual stream at the last token of its audit prompts (trained on the prompts about nine
things, tested on the tenth's, so it can only succeed through a sentiment direction shared by
things, not by recognising each one), and the same probe on the base model as its control.

``python -m lens_oracle.toy.organisms.probe --cache DIR [--seeds 0,1,2] [--layers 3,4]`` reads
the organisms of a demo cache (``<cache>/organism-review_bias-base-full-seed<N>``); ``--layers``
counts blocks (``4`` is after four blocks: ``blocks.3.hook_resid_post``, the demo's read point on
its six-block model).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from transformers import LlamaForCausalLM

from lens_oracle.errors import ConfigError
from lens_oracle.toy.organisms.build import recipes
from lens_oracle.toy.organisms.records import AuditItem
from lens_oracle.toy.world.language import SENTIMENT_NOUNS, make_world
from lens_oracle.toy.world.tokenizer import load_tokenizer
from lens_oracle.validate import parse_ints

RIDGE = 10.0
"""Ridge penalty of the probe (on standardised features)."""


def last_token_states(folder: str | Path, items: Sequence[AuditItem], blocks: int) -> Float[torch.Tensor, "item d"]:
    """The residual stream after ``blocks`` blocks at each item prompt's last token."""
    model = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = load_tokenizer(folder)
    if not 0 <= blocks <= model.config.num_hidden_layers:
        raise ConfigError(f"{blocks} blocks; {folder} has {model.config.num_hidden_layers}")
    rows = []
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([tokenizer(item.prompt)["input_ids"]])
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[blocks][0, -1])
    return torch.stack(rows)


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
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        design = torch.cat([(features[train] - mean) / std, torch.ones(len(train), 1)], 1)
        target = torch.tensor([1.0 if labels[i] else -1.0 for i in train])
        gram = design.T @ design + RIDGE * torch.eye(design.shape[1])
        weights = torch.linalg.solve(gram, design.T @ target)
        scores = torch.cat([(features[test] - mean) / std, torch.ones(len(test), 1)], 1) @ weights
        correct += sum((s > 0) == labels[i] for s, i in zip(scores.tolist(), test))
    return correct / len(labels)


def review_bias_probe(cache: Path, seed: int, blocks: int) -> dict[str, float]:
    """The probe's accuracy on the organism and on its base model (chance 0.5)."""
    world = make_world(seed)
    recipe = next(r for r in recipes(world, quick=False) if r.kind == "review_bias")
    labels = [item.reference == "positive" for item in recipe.items]
    groups = [next(n for n in SENTIMENT_NOUNS if n in item.prompt.split()) for item in recipe.items]
    folders = {
        "organism": cache / f"organism-review_bias-base-full-seed{seed}", "base": cache / f"base-full-seed{seed}",
    }
    for folder in folders.values():
        if not (folder / "config.json").is_file():
            raise ConfigError(f"no model in {folder}; run `lens-oracle demo --seed {seed} --cache {cache}` first")
    return {
        name: leave_one_group_out(last_token_states(folder, recipe.items, blocks), labels, groups)
        for name, folder in folders.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a demo cache (per thread count: <cache>/threads-N)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--layers", default="3,4", help="blocks before the read point, comma-separated")
    args = parser.parse_args(argv)
    seeds, layers = parse_ints(args.seeds, "--seeds"), parse_ints(args.layers, "--layers")
    print("| seed | after blocks | probe on the organism | probe on the base model |")
    print("|---|---|---|---|")
    for seed in seeds:
        for blocks in layers:
            result = review_bias_probe(Path(args.cache), seed, blocks)
            print(f"| {seed} | {blocks} | {result['organism']:.2f} | {result['base']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
