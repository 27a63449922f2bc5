// cuemu stand-in for <cuda_fp16.h>: see cuemu/runtime.h
#pragma once
#include "cuemu/runtime.h"
