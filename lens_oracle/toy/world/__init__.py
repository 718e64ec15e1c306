"""The toy world: a seeded synthetic language (:mod:`.language`), its word-level tokenizer
(:mod:`.tokenizer`) and the toy base model pretrained on it (:mod:`.model`)."""
