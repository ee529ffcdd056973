// Stand-in for the CUDA header under the CPU harness.
#pragma once
#include "../cuda_emu.h"
