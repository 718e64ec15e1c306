"""The Activation Oracles story on a real chat model: SmolLM2-135M-Instruct, offline, on a CPU.

* :mod:`.text` -- the real text the oracle trains on and the organisms' scripts, all offline;
* :mod:`.organisms` -- LoRA fine-tunes of SmolLM2 that hide knowledge (taboo, user gender), verified;
* :mod:`.mixture` -- the oracle's training mixture, built with the library's data builders;
* :mod:`.audit` -- the organisms as evaluation tasks against every control, and a held-out check
  of the oracle's own kind of question;
* :mod:`.demo` -- the pipeline behind ``lens-oracle demo --real``: cached, stamped stages and the outputs.

The model comes from ``lens-oracle fetch smollm2`` (``make real-model``); nothing here downloads.
"""
