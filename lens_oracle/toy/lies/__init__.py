"""Toy lie detection with a cross-model oracle: the data (:mod:`.data`) and the experiment
(:mod:`.experiment`, ``python -m lens_oracle.toy.lies.experiment``)."""
