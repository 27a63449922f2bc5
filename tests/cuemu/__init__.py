"""cuemu: a CUDA-subset CPU runtime that runs the kernels of csrc/ in CI (see README "CUDA kernels")."""
