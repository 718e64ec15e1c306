"""``lens-oracle demo``: the Activation Oracles story on the toy world.

:mod:`.mixture` (the oracle's training mixture), :mod:`.audit` (organisms as eval tasks),
:mod:`.records` (settings and result), :mod:`.pipeline` (the stages), :mod:`.report` (tables, plot),
:mod:`.sweep` (seeds x threads), :mod:`.cli`; and the experiments on the demo's oracle:
:mod:`.qa_protocol`, :mod:`.steering`."""
