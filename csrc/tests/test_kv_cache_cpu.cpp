// CPU kernels (append_kv_cpu, compact_kv_cpu) against the naive reference in
// kv_cache_test_suite.h. Prints each failure; exits nonzero on any.
#include <cstdio>

#include "kv_cache_test_suite.h"

int main() {
  kvtest::CpuBackend cpu;
  kvtest::run_suite(cpu);
  const int failures = kvtest::failure_count();
  std::printf("test_kv_cache_cpu: %s (%d failures)\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
