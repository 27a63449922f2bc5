// cuemu stand-in for <cuda_bf16.h>: see cuemu/runtime.h
#pragma once
#include "cuemu/runtime.h"
