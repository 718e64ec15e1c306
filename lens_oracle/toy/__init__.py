"""The built-in toy world the demo and tests run on, in the shape of its stories; imports run one
way, down this list:

* :mod:`.world`: the synthetic language, its tokenizer and the toy base model.
* :mod:`.organisms`: model organisms fine-tuned from the base (the demo's and the held-out kinds).
* :mod:`.demo`: ``lens-oracle demo``: the oracle's mixture, the audit, the sweep, and the toy
  experiments built on the demo's oracle (the QA protocol, steering).
* :mod:`.lies`: toy lie detection with a cross-model oracle (uses only :mod:`.world`).
* :mod:`.tiny`: a tiny random Llama for any tokenizer (tutorials and tests).
"""
