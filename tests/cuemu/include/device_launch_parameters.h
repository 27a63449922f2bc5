// cuemu stand-in for <device_launch_parameters.h>: see cuemu/runtime.h
#pragma once
#include "cuemu/runtime.h"
