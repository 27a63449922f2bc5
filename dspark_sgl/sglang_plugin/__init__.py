"""SGLang-specific code of dspark_sgl: hooks that put our implementations under SGLang's
``--speculative-algorithm DSPARK``. Only :mod:`dspark_sgl.plugin` imports this package,
and only its hook modules import SGLang (lazily, when a hook runs or registers)."""
