"""Does a meta-model trained never on lies detect them? Meta-Models' test on a real chat model.

SmolLM2-135M-Instruct (fetched once with ``make real-model``) plays both parts:

1. the input model answers fact questions, told either to answer truthfully or to lie. SmolLM2
   does not follow a lying instruction (the run measures how rarely), so it is taught it with a
   small LoRA on half of the facts it knows; the lie chats ask the other half;
2. the meta-model, a second SmolLM2 with a learned projector into its embeddings (the Meta-Models
   preset), reads the last tokens of the input model's reply at five depths. It is trained only
   on sentiment, emotion and language questions about the input model's own replies;
3. it is asked "Is the assistant lying?" about balanced truthful/lying chats, next to every
   control (adapter off, untrained, shuffled / random / no vectors, the input model asked, the
   chat read as text without the instruction) and a supervised linear probe as the reference.

    python tutorials/07_real_lies.py            # the README's table for one seed (about 34 minutes, cached)
    python tutorials/07_real_lies.py --smoke    # a few examples of everything (what CI runs)

``lens-oracle lies [--seeds 0,1,2]`` runs the same experiment. Then the meta-model is asked about
one new chat of each kind, on a fact of your choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lens_oracle.activations import capture_layers
from lens_oracle.generation import generate_text
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.real.demo import base_folder
from lens_oracle.real.lie_text import LYING, TRUTHFUL, Fact, LieChat, first_sentence
from lens_oracle.real.lies import LIE_QUESTION, chat_item, run_real_lies
from lens_oracle.real.organisms import chat_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few examples of every stage (about two minutes)")
    parser.add_argument("--out", type=Path, default=Path("lies_out"))
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: the lens_oracle cache)")
    parser.add_argument("--question", default="What is the capital of Japan?")
    parser.add_argument("--truth", default="Tokyo", help="the true answer to --question")
    args = parser.parse_args()

    result = run_real_lies(args.out, smoke=args.smoke, cache=args.cache)
    print(result.markdown())
    print("seconds per stage: " + ", ".join(f"{k} {result.timings[k]:.0f}" for k in
                                            ("facts", "input_model", "chats", "replies", "meta_models", "evaluation")))

    # Ask the trained meta-model yourself: one reply under each instruction, read and judged.
    input_model = load_model(str(result.folders["input_model"]), trainable=False)
    meta = ActivationOracle.load(result.folders["all"], str(base_folder()))
    fact = Fact(args.question, args.truth, "capital")
    layers = list(meta.projector.config.layers) if meta.projector is not None else []
    for system in (TRUTHFUL, LYING):
        prompt = chat_ids(input_model.tokenizer, [{"role": "system", "content": system},
                                                  {"role": "user", "content": fact.question}], generation_prompt=True)
        reply = first_sentence(generate_text(input_model, [prompt], 24)[0]).strip()
        item = chat_item(input_model.tokenizer, LieChat(fact, system == LYING, reply), result.config.window)
        by_layer = capture_layers(input_model, [list(item.context)], layers, positions=item.positions)
        answer = meta.ask_batch(list(by_layer.values()), LIE_QUESTION, max_new_tokens=2)[0]
        told = "lie" if system == LYING else "truth"
        print(f"told to tell the {told}: {reply!r} -> meta-model: {answer!r}")


if __name__ == "__main__":
    main()
