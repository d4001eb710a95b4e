// Programmatic dependent launch for the CUTLASS ops (inception_fast/kernels/programmatic_launch.py
// has the why): a kernel launched with it waits for the kernel before it in the stream and that
// kernel's writes (griddepcontrol.wait) before its first global memory access (after its set-up:
// see kernel_entry), so it may be scheduled, and set itself up, while that kernel finishes.
#pragma once

#include <cstdlib>
#include <cstring>

namespace inception_fast {

// INCEPTION_FAST_PDL=0 turns it off; read at each launch, as the Python side does.
inline bool programmatic_launch_enabled() {
  const char* setting = std::getenv("INCEPTION_FAST_PDL");
  return setting == nullptr || std::strcmp(setting, "0") != 0;
}

}  // namespace inception_fast
