"""Steer a model through its oracle (LatentQA's control): say what the oracle should read, and
train the model until it does.

An oracle answers questions about a model's activations. Keep it frozen, pick a question and
the answer you want ("is the user male or female ?" -> "female"), and train a LoRA on the
*target* so that the oracle, reading the target on your prompts, gives that answer: the oracle's
loss flows back through the injected activations into the target's adapter only. Does the
target's *behaviour* follow? This script measures it in the toy world, where the behaviour is
known: the base model addresses a user as "sir ," or "madam ," from hints in their message.

    python tutorials/06_steering.py              # the quick demo's models: a few minutes on a CPU
    python tutorials/06_steering.py --full --seeds 1,2   # the README's table (full demo models)
    python tutorials/06_steering.py --smoke      # seconds, a tiny random model: what CI runs

Each direction is trained on some prompts and measured on held-out ones, next to two controls:
steering toward a random answer of another kind, and the same steps with the oracle's loss
replaced by zero. ``python -m lens_oracle.toy.demo.steering`` runs the same experiment.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lens_oracle as lo
from lens_oracle.control import SteerConfig, steer_with_oracle


def smoke() -> None:
    """The API on a tiny random Llama (no behaviour claim): steer, compare, save, reload."""
    from lens_oracle.activations import LastToken, capture
    from lens_oracle.generation import generate_text
    from lens_oracle.toy.tiny import random_tiny_llama
    from lens_oracle.toy.world.language import make_world
    from lens_oracle.toy.world.tokenizer import build_tokenizer

    world = make_world(0)
    tokenizer = build_tokenizer(world)
    oracle = lo.ActivationOracle.create(
        random_tiny_llama(tokenizer, seed=0), tokenizer, adapter=lo.AdapterConfig(rank=4, alpha=8, dropout=0.0),
        injection=lo.InjectionConfig(layer=1),
    )
    prompts = [world.fact_sentence(e, "city") for e in world.entities[:8]]
    question = world.question_for("city")
    config = SteerConfig(train=lo.TrainConfig(learning_rate=3e-3, batch_size=4, epochs=3), positions=LastToken())
    steered = steer_with_oracle(oracle, None, prompts, question, "paris", config)
    losses = steered.result.losses
    print(f"steered {steered.result.steps} steps at layer {steered.layer}: oracle loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    ids = [tokenizer(p)["input_ids"] for p in prompts[:2]]
    with steered.active() as target:
        after = generate_text(target, ids, 4, adapter=True)
        reading = oracle.ask_batch(capture(target, prompts[:2], steered.layer), question, max_new_tokens=3)
    print(f"base replies {generate_text(oracle.model, ids, 4)} -> steered {after}; the oracle reads {reading}")
    out = Path(tempfile.mkdtemp()) / "steering"
    steered.save(out)
    print(f"saved the steering adapter to {out}: {sorted(p.name for p in out.iterdir())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, a few steps (CI)")
    parser.add_argument("--full", action="store_true", help="the full demo's models (default: the quick demo's)")
    parser.add_argument("--seeds", default="0", help="demo seeds, e.g. 1,2 (default 0)")
    parser.add_argument("--out", type=Path, default=Path("steering_out"))
    args = parser.parse_args()
    if args.smoke:
        smoke()
        return
    from lens_oracle.toy.demo.steering import run_steering, steering_markdown
    from lens_oracle.toy.demo.sweep import parse_ints

    data = run_steering(args.out, seeds=parse_ints(args.seeds, "--seeds"), quick=not args.full)
    print(steering_markdown(data))
    print(f"wrote {args.out}/steering.json and steering.md")


if __name__ == "__main__":
    main()
