"""dspark_sgl: DSpark speculative decoding kernels and a Python layer for SGLang.

Data flows one way: draft model -> Markov sampling (:mod:`dspark_sgl.markov`) ->
scheduler (:mod:`dspark_sgl.scheduler`) -> chain verification
(:mod:`dspark_sgl.verify`). Every kernel has a PyTorch reference that is also the CPU
fallback; :mod:`dspark_sgl._dispatch` chooses at run time and logs the choice.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("dspark_sgl").addHandler(logging.NullHandler())
