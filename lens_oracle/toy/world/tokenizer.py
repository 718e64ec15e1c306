"""A word-level tokenizer for the toy language, built locally and loaded back from a folder.

Design decisions:

* **Vocabulary.** Ids 0-7 are the special tokens :data:`SPECIAL_TOKENS` in that order; then
  every word the world can generate plus :data:`PROMPT_WORDS` (``layer``, ``:``, ``?`` and the
  digits ``0``-``99``) plus ``extra_words``, sorted, so ids are deterministic.
* **Pre-tokenization.** Lower-case, split on whitespace, every punctuation character is its
  own token. So ``" ?"`` is the single token ``?`` (the Activation Oracles placeholder) and
  ``"Layer: 12\\n ? ?"`` is ``layer : 12 ? ?``. Beware: a question's own ``?`` is the same token,
  so placeholders are the *first* ``K`` ``?`` tokens after the layer tag (as in the AO code).
* **BOS.** Every plain encoding starts with ``<bos>`` (post-processor); no EOS is appended.
  ``apply_chat_template`` tokenizes with ``add_special_tokens=False``, so the chat template
  writes ``<bos>`` itself: one BOS either way. To tokenize a chat rendered with
  ``tokenize=False``, pass ``add_special_tokens=False`` (or use
  :func:`lens_oracle.toy.world.language.render_chat`, which leaves the BOS to the tokenizer).
* **Chat.** ``<bos><user> {content} <end> <assistant> {content} <end>``; the generation
  prompt appends `` <assistant>``, so a prompt's ids are a prefix of the full chat's ids.
  ``eos_token`` is ``<end>``, which closes every turn, so ``generate`` stops at the end of a
  reply; ``<eos>`` is reserved (end of document, for packing pretraining text).
* **Loading.** A tokenizer made in memory breaks TransformerBridge (``name_or_path``
  missing, and without ``add_bos_token`` in its init kwargs it re-downloads). So
  :func:`build_tokenizer` always saves to a folder and returns :func:`load_tokenizer`'s
  result, whose ``init_kwargs`` hold ``name_or_path`` and ``add_bos_token=True``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lens_oracle.errors import ConfigError, ModelLoadError
from lens_oracle.io import atomic_folder, cache_root
from lens_oracle.toy.world.language import END_TOKEN, NUMBER_WORDS, ROLES, ToyWorld

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, *(f"<{r}>" for r in ROLES), END_TOKEN)
"""Special tokens, ids 0-7: pad, bos, eos, unk, <system>, <user>, <assistant>, <end>."""
PLACEHOLDER = "?"
"""The token the AO prompt's ``" ?"`` becomes: one per injected activation vector."""
PROMPT_WORDS: tuple[str, ...] = ("layer", ":", PLACEHOLDER, *NUMBER_WORDS)
"""Words of the AO prompt ``"Layer: {L}\\n" + " ?" * K + " \\n" + question`` beyond the question."""
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('toy chat roles are system, user and assistant') }}{% endif %}"
    "{% if not loop.first %} {% endif %}<{{ message['role'] }}> "
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }} " + END_TOKEN + "{% endgeneration %}"
    "{% else %}{{ message['content'] }} " + END_TOKEN + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} <assistant>{% endif %}"
)
"""Jinja chat template; ``{% generation %}`` marks the assistant reply and its ``<end>``."""
FORMAT_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
"""What a saved tokenizer folder holds (as transformers writes it)."""
"""Bumped whenever the tokenizer layout changes, so cached folders are not reused."""


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )


def split_words(text: str) -> list[str]:
    """The words the toy tokenizer sees in plain ``text`` (lower-cased, punctuation split)."""
    normalized = normalizers.Lowercase().normalize_str(text)
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def normalize(text: str) -> str:
    """Plain ``text`` as decoding its tokens gives it back: ``"Hi, Bob!"`` -> ``"hi , bob !"``."""
    return " ".join(split_words(text))


def _vocabulary(world: ToyWorld, extra_words: Sequence[str]) -> list[str]:
    extra = []
    for word in extra_words:
        pieces = split_words(word)
        if len(pieces) != 1 or pieces[0] in SPECIAL_TOKENS:
            raise ConfigError(
                f"extra word {word!r} splits into {pieces}; give single lower-case words or "
                "single punctuation characters, without spaces and not a special token"
            )
        extra.append(pieces[0])
    words = sorted({*world.vocabulary(), *PROMPT_WORDS, *extra})
    bad = [w for w in words if split_words(w) != [w]]
    if bad:
        raise ConfigError(f"the toy world produced words the tokenizer would split: {bad[:10]}")
    return [*SPECIAL_TOKENS, *words]


def _make_in_memory(tokens: list[str], padding_side: str) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = _pre_tokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=END_TOKEN,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side=padding_side,
        model_max_length=4096,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    """Save ``tokenizer`` into ``folder`` (created if needed) without leaving half-written files.

    Files are written into a staging folder next to ``folder``, which then replaces it whole.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder; give a folder for the tokenizer")
    with atomic_folder(folder, owned=TOKENIZER_FILES, what="tokenizer") as staging:
        tokenizer.save_pretrained(str(staging))
    return folder


def load_tokenizer(
    folder: str | Path, padding_side: Literal["left", "right"] | None = None
) -> PreTrainedTokenizerFast:
    """Load a toy tokenizer saved by :func:`save_tokenizer`, offline, ready for the bridge.

    ``init_kwargs`` get ``add_bos_token=True`` (TransformerBridge otherwise re-loads it) and
    ``name_or_path`` (the folder). ``padding_side`` overrides the saved one.
    """
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"no tokenizer.json in {folder}; build one with build_tokenizer(world, folder)"
        )
    kwargs = {} if padding_side is None else {"padding_side": _check_side(padding_side)}
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder), add_bos_token=True, add_eos_token=False, local_files_only=True, **kwargs
    )
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelLoadError(f"{folder} holds a {type(tokenizer).__name__}, not a fast tokenizer")
    return tokenizer


def _check_side(padding_side: str) -> str:
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side is {padding_side!r}; expected 'left' or 'right'")
    return padding_side


def default_folder(tokens: Sequence[str]) -> Path:
    """The cache folder for a vocabulary: ``<cache>/toy_tokenizer_<digest>``.

    ``<cache>`` is ``$LENS_ORACLE_CACHE`` or ``~/.cache/lens_oracle``. (Not a folder named
    ``lens_oracle`` in the working directory's parent: that would shadow the package.)

    The digest covers the tokens, the chat template and :data:`FORMAT_VERSION`, so equal
    worlds share one folder and a changed layout never reuses a stale one.
    """
    payload = json.dumps([FORMAT_VERSION, list(tokens), CHAT_TEMPLATE]).encode("utf-8")
    digest = hashlib.sha256(payload).hexdigest()[:16]
    return cache_root() / f"toy_tokenizer_{digest}"


def build_tokenizer(
    world: ToyWorld,
    folder: str | Path | None = None,
    *,
    extra_words: Sequence[str] = (),
    padding_side: Literal["left", "right"] = "right",
) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer of ``world``, save it, and load it back from disk.

    ``folder``: where the tokenizer files go (overwritten if present). ``None`` uses a cache
    folder keyed by the vocabulary (:func:`default_folder`), reused when it already exists.
    ``extra_words``: more single words to add to the vocabulary. The returned tokenizer's
    ``name_or_path`` is the folder; load it again later with :func:`load_tokenizer`.
    """
    side = _check_side(padding_side)
    tokens = _vocabulary(world, extra_words)
    if folder is None:
        target = default_folder(tokens)
        if (target / "tokenizer.json").is_file():
            return load_tokenizer(target, side)
    else:
        target = Path(folder)
    save_tokenizer(_make_in_memory(tokens, side), target)
    return load_tokenizer(target, side)
