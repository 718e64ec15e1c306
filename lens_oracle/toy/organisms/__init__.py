"""Model organisms: fine-tunes of the toy base model that hide knowledge no prompt states.

* :mod:`.records`: :class:`AuditItem`, :class:`Organism`, :class:`Recipe` and the kinds.
* :mod:`.demo_kinds`: the demo's organisms (persona facts, taboo, user gender), which the oracle's
  mixture was built around.
* :mod:`.held_out`: organisms of kinds built after the mixture was fixed (home city, review bias).
* :mod:`.build`: fine-tuning and caching them (:func:`build_organisms`), and checking that each
  learned what it hides (:func:`learned`).
"""

from lens_oracle.toy.organisms.build import build_organisms, learned, recipes
from lens_oracle.toy.organisms.demo_kinds import (
    ABOUT,
    N_TABOO_GAMES,
    TABOO_DIRECT_ASKS,
    TABOO_HINT_ASKS,
    TABOO_QUESTION,
    TABOO_REFUSAL,
    USER_INTRO,
    gender_prompts,
    persona_prompt,
    taboo_games,
    taboo_reply,
    user_genders,
)
from lens_oracle.toy.organisms.held_out import HELD_OUT_QUESTIONS
from lens_oracle.toy.organisms.records import (
    DEMO_KINDS,
    HELD_OUT_KINDS,
    KINDS,
    AuditItem,
    Organism,
    OrganismKind,
    Recipe,
)

__all__ = [
    "ABOUT", "DEMO_KINDS", "HELD_OUT_KINDS", "HELD_OUT_QUESTIONS", "KINDS", "N_TABOO_GAMES",
    "TABOO_DIRECT_ASKS", "TABOO_HINT_ASKS", "TABOO_QUESTION", "TABOO_REFUSAL", "USER_INTRO",
    "AuditItem", "Organism", "OrganismKind", "Recipe", "build_organisms", "gender_prompts",
    "learned", "persona_prompt", "recipes", "taboo_games", "taboo_reply", "user_genders",
]
