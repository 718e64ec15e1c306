"""Builders for tiny offline models and tokenizers shared by the tests (no network, ever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>", "<end>"]
COLOURS = ["red", "blue", "green", "gold"]
FILLER = [f"w{i}" for i in range(40)]
WORDS = ["layer", ":", "?", "what", "colour", "is", "here", "the", "answer", "a", "b"] + [
    str(i) for i in range(64)
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(folder: Path, *, chat: bool = True) -> Any:
    """A word-level tokenizer saved to ``folder`` and loaded back (as the bridge needs)."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + COLOURS + FILLER + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<end>", pad_token="<pad>", unk_token="<unk>",
    )
    fast.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS[4:]], special_tokens=True)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_llama(tokenizer: Any, *, n_layers: int = 4, d_model: int = 64, seed: int = 0) -> Any:
    """A tiny random Llama (GQA, RMSNorm, rotary) with a larger init so it learns fast."""
    from lens_oracle.toy.tiny import random_tiny_llama

    return random_tiny_llama(tokenizer, n_layers=n_layers, d_model=d_model, seed=seed)


def colour_task(tokenizer: Any, n: int, seed: int) -> list[tuple[list[int], int, str]]:
    """Contexts of filler words with one colour word; (ids, colour position, colour).

    The question never names the colour: only the activation at its position can tell.
    """
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 9)
        words = [rng.choice(FILLER) for _ in range(length)]
        at = rng.randrange(length)
        colour = rng.choice(COLOURS)
        words[at] = colour
        ids = tokenizer(" ".join(words))["input_ids"]
        out.append((ids, at + 1, colour))  # +1 for <bos>
    return out


def sweep_run_probe(run: Any) -> tuple[int, int, int, bool, bool, bool]:
    """A stand-in for one sweep run (``lens_oracle.toy.demo.sweep.run_one``), run in the spawned
    processes of ``run_all``: ``(seed, threads, pid, progress, met, hf_bars)``. ``met``: a
    one-thread run saw another one-thread run start while it waited (up to 60 s); only waits when
    ``run.out / "expect-pairs"`` exists. ``hf_bars``: Hugging Face's loading bars are on."""
    import os
    import time

    from transformers.utils import logging as hf_logging

    (run.out / f"started-{run.seed}-{run.threads}").touch()
    met = False
    if run.threads == 1 and (run.out / "expect-pairs").exists():
        deadline = time.monotonic() + 60
        while not met and time.monotonic() < deadline:
            met = len(list(run.out.glob("started-*-1"))) >= 2
            time.sleep(0.02)
    return run.seed, run.threads, os.getpid(), run.progress, met, hf_logging.is_progress_bar_enabled()
