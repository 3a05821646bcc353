// The process heap, whichever allocator serves it: jemalloc when the binary links it (the `expertstore` CLI does,
// see docs/architecture.md "Memory allocator"), else glibc's malloc. Found at run time, so a library needs no
// build flag to report or release the right allocator's memory.
#pragma once

#include <cstdint>
#include <string_view>

namespace es {

struct HeapStats {
  std::string_view allocator;  // "jemalloc" or "glibc"
  uint64_t in_use = 0;         // bytes allocated and not freed
  uint64_t free = 0;           // bytes freed but still held by the allocator (resident, not yet returned)
};

HeapStats ReadHeapStats();

// Hands freed pages back to the system: jemalloc purges every arena's dirty pages, glibc runs malloc_trim.
void ReleaseFreeHeap();

}  // namespace es
