// PinnedArena: the cache's host memory, allocated and pinned once and cut into equal slots, so that no request
// ever allocates or pins. CUDA pinned memory when a device is present, else mmap + mlock, else (mlock refused)
// unlocked but pre-faulted memory with a one-time warning. Every slot is 4 KiB aligned (O_DIRECT reads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "store/base/status.h"

namespace es {

enum class ArenaKind : uint8_t {
  kCudaPinned,  // cudaHostAlloc: page-locked and registered with the CUDA driver (fast async H2D copies)
  kLocked,      // mmap + mlock: page-locked, never swapped
  kUnlocked,    // mmap, pre-faulted; mlock was refused (RLIMIT_MEMLOCK) or not asked for
};
std::string_view ArenaKindName(ArenaKind kind);

struct ArenaOptions {
  bool allow_cuda = true;   // try cudaHostAlloc when the build has CUDA and a device is present
  bool allow_mlock = true;  // try mlock for the mmap arena
};

// io_uring refuses a registered buffer larger than this (the kernel's limit per iovec), so the arena is
// registered in chunks of at most this size, cut at slot boundaries.
inline constexpr uint64_t kMaxRegisteredBufferBytes = 1ull << 30;

// How an arena of `slots` slots of `slot_bytes` is cut into registrable chunks: (first slot, slot count) pairs,
// consecutive, each at most max_chunk_bytes. Empty when a single slot exceeds max_chunk_bytes.
std::vector<std::pair<uint32_t, uint32_t>> SlotChunks(uint64_t slot_bytes, uint32_t slots, uint64_t max_chunk_bytes);

// Owns the memory: slot spans stay valid for the arena's lifetime and never move. The arena itself does no
// locking; which slot is in use by whom is the cache's business. Not copyable.
class PinnedArena {
 public:
  // slot_bytes must be a positive multiple of 4 KiB and slots positive. ResourceExhausted when the memory
  // cannot be had at all.
  static Result<std::unique_ptr<PinnedArena>> Create(uint64_t slot_bytes, uint32_t slots, const ArenaOptions& options);
  ~PinnedArena();
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  ArenaKind kind() const { return kind_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint32_t num_slots() const { return num_slots_; }
  uint64_t bytes() const { return slot_bytes_ * num_slots_; }
  std::span<std::byte> slot(uint32_t index) const { return {base_ + index * slot_bytes_, slot_bytes_}; }

  // The arena as buffers for IoEngine::AddBuffers: consecutive chunks of whole slots, each at most
  // kMaxRegisteredBufferBytes. Empty when one slot is larger than that (reads then go unregistered).
  std::vector<std::span<std::byte>> RegistrationChunks() const;

 private:
  PinnedArena() = default;

  std::byte* base_ = nullptr;
  uint64_t slot_bytes_ = 0;
  uint32_t num_slots_ = 0;
  ArenaKind kind_ = ArenaKind::kUnlocked;
};

}  // namespace es
