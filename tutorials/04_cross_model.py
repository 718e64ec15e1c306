"""Cross-model oracles (Meta-Models): an oracle of one model reads another model's activations.

The Meta-Models recipe (REFERENCE.md section 2) on the toy world:

1. two toy Llamas pretrained separately on the same world: the *target* (width 96) and the
   *meta-model* (width 64, another seed);
2. the Meta-Models preset: the target's last tokens at several depths, a shared linear
   projection into the meta-model's width, each projected vector replacing the embedding of one
   placeholder (soft tokens), one tagged placeholder group per layer;
3. training on yes/no questions about toy analogues of the paper's four sets (sentiment,
   emotion, language, multilingual sentiment) -- never about lying;
4. asking about one chat, then saving and loading (the projector travels with the oracle);
5. out of distribution: "is the assistant lying ?" against chance, the untrained meta-model,
   ablated activations, the black box, a text-only baseline and a supervised probe.

    python tutorials/04_cross_model.py              # toy models (pretrained once, cached; minutes)
    python tutorials/04_cross_model.py --lie-aware  # the meta-model's pretraining also judges lies in text
    python tutorials/04_cross_model.py --smoke      # tiny barely-trained models, seconds (CI)
    python tutorials/04_cross_model.py --source PATH --oracle-model PATH   # two local models, steps 1-4

With ``--source``/``--oracle-model`` the same toy training sets are used as plain text; the lie
table needs a target that knows the toy world's facts, so it runs on the toy models only.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

from lens_oracle.activations import LastK, capture_layers
from lens_oracle.config import TrainConfig
from lens_oracle.evals.yes_no_table import table
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.prompt import oracle_user_text
from lens_oracle.runner import train_oracle
from lens_oracle.toy.lies.data import (
    TEMPLATES,
    TINY_ORACLE,
    TINY_TARGET,
    build_lie_world,
    chat_text,
    training_rows,
)
from lens_oracle.toy.lies.experiment import (
    LieExperiment,
    evaluate_lies,
    in_distribution,
    toy_preset,
)
from lens_oracle.toy.world.language import make_world
from lens_oracle.toy.world.model import QUICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a local model folder to read (the input-model)")
    parser.add_argument("--oracle-model", help="a local model folder for the meta-model")
    parser.add_argument("--lie-aware", action="store_true", help="toy meta-model that read lies judged in text")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps (CI)")
    parser.add_argument("--out", type=Path, default=None, help="where to save the oracle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if bool(args.source) != bool(args.oracle_model):
        parser.error("give both --source and --oracle-model, or neither")

    # 1. Two models of different widths, trained separately.
    world = make_world(args.seed)
    lies = None
    if args.source:
        target, oracle_base = load_model(args.source, trainable=False), args.oracle_model
        tokenizer = target.tokenizer
    else:
        torch.set_num_threads(1)  # tiny toy models are overhead-bound: one thread is as fast
        lies = build_lie_world(
            seed=args.seed, lie_aware=args.lie_aware, progress=not args.smoke,
            target_config=TINY_TARGET if args.smoke else QUICK,
            oracle_config=TINY_ORACLE if args.smoke else None,  # None: the lie-aware one if asked
        )
        target, oracle_base, tokenizer = lies.load_target(), lies.oracle_base, lies.tokenizer
        for name, metrics in lies.metrics().items():
            print(f"{name}: held-out loss {metrics['heldout_loss']:.3f}, fact recall {metrics['fact_recall']:.2f}")
    small = 16 if args.smoke else None
    exp = LieExperiment(
        per_task=small or 600, n_eval=small or 200, n_probe=small or 200, n_heldout=small or 100,
        train=TrainConfig(learning_rate=3e-3, batch_size=16, epochs=1 if args.smoke else 4,
                          warmup_fraction=0.05, progress=not args.smoke),
        seed=args.seed,
    )

    # 2. The Meta-Models preset for this target.
    preset = toy_preset(target, exp)
    print(f"target {target.name} (d_model {target.d_model}) read at layers {preset.layers}, "
          f"last {exp.window} tokens; projector {preset.projector.kind}, shared={preset.projector.shared}; "
          f"injection {preset.injection.mode} at blocks.{preset.injection.layer}.hook_resid_pre")

    # 3. Train on the toy sets (never on lying).
    rows = training_rows(world, exp.per_task + exp.n_heldout, args.seed)
    sources = {task: task_rows[: exp.per_task] for task, task_rows in rows.items()}
    examples = preset.build_examples(sources, tokenizer, templates=TEMPLATES, prefix="", seed=args.seed)
    first = examples[0]
    n_vec = len(first.positions) * len(first.read_layers)
    print(f"{len(examples)} training examples; one of them:\n  context: {first.context_text!r}\n"
          f"  oracle prompt: {oracle_user_text(first.layer_tag, n_vec, first.question)!r} -> {first.answer}")
    oracle = preset.create_oracle(oracle_base)
    print(f"meta-model {oracle.config.base_model} (d_model {oracle.config.d_model}): "
          f"{sum(p.numel() for p in oracle.trainable_parameters())} trainable parameters")
    result = train_oracle(oracle, examples, preset.train, source=target)
    print(f"trained {result.steps} steps: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")

    # 4. Ask about one chat, save, load, ask again.
    rng = random.Random(args.seed + 7)
    review, label = world.sentiment_sentence(rng, noun="film")
    chat = chat_text([{"role": "user", "content": "how was the film ?"}, {"role": "assistant", "content": review}])
    by_layer = capture_layers(target, [chat], list(preset.layers), positions=LastK(exp.window))
    question = "is this text positive ?"
    answer = oracle.ask_batch(list(by_layer.values()), question, max_new_tokens=2)[0]
    print(f"ask: {chat!r}\n  {question!r} -> {answer!r} (the review is {label})")
    out = args.out or Path(tempfile.mkdtemp()) / "meta-model"
    oracle.save(out, overwrite=True)  # replaces only an oracle saved there before
    print(f"saved to {out}: {sorted(p.name for p in out.iterdir())}")
    again = ActivationOracle.load(out)
    print(f"reloaded oracle answers: {again.ask_batch(list(by_layer.values()), question, max_new_tokens=2)[0]!r}")

    # 5. Out of distribution: lie detection (toy world only: the target knows its facts).
    if lies is None:
        return
    held = {task: task_rows[exp.per_task :] for task, task_rows in rows.items()}
    for task, (acc, shuffled) in in_distribution(oracle, preset, target, held, tokenizer, args.seed + 50).items():
        print(f"in-distribution {task}: oracle {acc:.3f}, shuffled activations {shuffled:.3f}")
    fresh = preset.create_oracle(oracle_base)
    for style in exp.styles:
        print(f"\nlie detection ({style} lies): \"is the assistant lying ?\"\n")
        print(table(evaluate_lies(oracle, fresh, preset, target, lies, exp, style)))


if __name__ == "__main__":
    main()
