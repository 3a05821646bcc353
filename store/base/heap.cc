#include "store/base/heap.h"

#include <malloc.h>

#include <cstddef>
#include <cstdio>

// jemalloc's control interface. Weak: null unless the binary links jemalloc, which then also serves malloc.
extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen)
    __attribute__((weak));

namespace es {
namespace {

// jemalloc's MALLCTL_ARENAS_ALL: "arena.<i>.purge" with this index purges every arena.
constexpr unsigned kAllArenas = 4096;

bool JemallocRead(const char* name, size_t& value) {
  size_t len = sizeof(value);
  return mallctl(name, &value, &len, nullptr, 0) == 0;
}

}  // namespace

HeapStats ReadHeapStats() {
  HeapStats stats;
  if (mallctl != nullptr) {
    stats.allocator = "jemalloc";
    uint64_t epoch = 1;  // statistics are refreshed when the epoch is written
    size_t len = sizeof(epoch);
    mallctl("epoch", &epoch, &len, &epoch, len);
    size_t allocated = 0, resident = 0;
    if (JemallocRead("stats.allocated", allocated) && JemallocRead("stats.resident", resident)) {
      stats.in_use = allocated;
      stats.free = resident > allocated ? resident - allocated : 0;  // includes the allocator's own metadata
    }
    return stats;
  }
  stats.allocator = "glibc";
  const struct mallinfo2 heap = ::mallinfo2();
  stats.in_use = heap.uordblks + heap.hblkhd;
  stats.free = heap.fordblks;
  return stats;
}

void ReleaseFreeHeap() {
  if (mallctl != nullptr) {
    char name[32];
    std::snprintf(name, sizeof(name), "arena.%u.purge", kAllArenas);
    mallctl(name, nullptr, nullptr, nullptr, 0);
    return;
  }
  ::malloc_trim(0);
}

}  // namespace es
