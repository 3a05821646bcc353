// The heap statistics follow the allocator that serves this process (glibc's in the test binaries).
#include "store/base/heap.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>

namespace es {
namespace {

TEST(HeapTest, StatisticsCountWhatIsAllocated) {
  const HeapStats before = ReadHeapStats();
  EXPECT_TRUE(before.allocator == "glibc" || before.allocator == "jemalloc") << before.allocator;
  constexpr size_t kBytes = 32 << 20;
  auto block = std::make_unique<char[]>(kBytes);
  std::memset(block.get(), 1, kBytes);
  const HeapStats during = ReadHeapStats();
  EXPECT_GE(during.in_use, before.in_use + kBytes);
  block.reset();
  ReleaseFreeHeap();
  const HeapStats after = ReadHeapStats();
  EXPECT_LT(after.in_use, during.in_use - kBytes / 2);
}

}  // namespace
}  // namespace es
