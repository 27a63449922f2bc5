// cuemu stand-in for <cuda.h>: see cuemu/runtime.h
#pragma once
#include "cuemu/runtime.h"
