// cuemu stand-in for <cuda_runtime.h>: see cuemu/runtime.h
#pragma once
#include "cuemu/runtime.h"
