// PinnedArena: CUDA pinned memory when a device is there, else mmap + mlock, else pre-faulted mmap with a
// warning printed once per process. The fallbacks are silent when they are the expected path (no GPU).
#include "cache/arena.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "store/base/file_system.h"

#if defined(ES_HAVE_CUDA)
#include "store/base/cuda_status.h"
#endif

namespace es {

std::string_view ArenaKindName(ArenaKind kind) {
  switch (kind) {
    case ArenaKind::kCudaPinned: return "cuda-pinned";
    case ArenaKind::kLocked: return "mlocked";
    case ArenaKind::kUnlocked: return "unlocked";
  }
  return "unknown";
}

namespace {

#if defined(ES_HAVE_CUDA)
// Pinned memory from the CUDA runtime, or NotSupported when there is no device or driver (the common case on
// CPU-only machines, not worth a warning).
Result<std::byte*> CudaPinnedAlloc(uint64_t bytes) {
  int devices = 0;
  cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) {
    cudaGetLastError();  // resets the runtime's last-error state, so later CUDA calls start clean
    return CudaStatus(err, "cudaGetDeviceCount");
  }
  if (devices == 0) return Status::NotSupported("no CUDA device");
  void* p = nullptr;
  // Portable: usable from every CUDA context the process creates (compute may pick any device).
  ES_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
  return static_cast<std::byte*>(p);
}

void CudaPinnedFree(std::byte* p) { cudaFreeHost(p); }
#else
Result<std::byte*> CudaPinnedAlloc(uint64_t) { return Status::NotSupported("built without CUDA"); }
void CudaPinnedFree(std::byte*) {}
#endif

void WarnOnce(std::once_flag& flag, const std::string& message) {
  std::call_once(flag, [&] { std::fprintf(stderr, "expertstore: warning: %s\n", message.c_str()); });
}

std::once_flag g_cuda_warning;
std::once_flag g_mlock_warning;

// Touches every page so that no request ever takes a page fault on the arena (mlock does this itself).
void Prefault(std::byte* base, uint64_t bytes) {
#if defined(MADV_POPULATE_WRITE)
  if (::madvise(base, bytes, MADV_POPULATE_WRITE) == 0) return;
#endif
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  for (uint64_t off = 0; off < bytes; off += page) base[off] = std::byte{0};
}

}  // namespace

Result<std::unique_ptr<PinnedArena>> PinnedArena::Create(uint64_t slot_bytes, uint32_t slots,
                                                         const ArenaOptions& options) {
  if (slot_bytes == 0 || slot_bytes % kDirectIoAlignment != 0 || slots == 0) {
    return Status::InvalidArgument("arena slots must be a positive multiple of 4096 bytes, and at least one");
  }
  if (slot_bytes > UINT64_MAX / slots) return Status::InvalidArgument("arena size overflows");
  const uint64_t bytes = slot_bytes * slots;
  std::unique_ptr<PinnedArena> arena(new PinnedArena());
  arena->slot_bytes_ = slot_bytes;
  arena->num_slots_ = slots;

  if (options.allow_cuda) {
    Result<std::byte*> p = CudaPinnedAlloc(bytes);
    if (p.ok()) {
      arena->base_ = *p;
      arena->kind_ = ArenaKind::kCudaPinned;
      return arena;
    }
    if (!p.status().IsNotSupported()) {
      WarnOnce(g_cuda_warning, "CUDA pinned allocation of " + std::to_string(bytes) + " bytes failed (" +
                                   p.status().message() + "); using host memory");
    }
  }

  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap cache arena of " + std::to_string(bytes) + " bytes");
  arena->base_ = static_cast<std::byte*>(p);
  // Huge pages cut TLB misses when kernels stream a 9 MiB expert and let io_uring pin fewer pages; advisory.
  ::madvise(p, bytes, MADV_HUGEPAGE);
  arena->kind_ = ArenaKind::kUnlocked;
  if (options.allow_mlock) {
    if (::mlock(p, bytes) == 0) {
      arena->kind_ = ArenaKind::kLocked;
      return arena;
    }
    int err = errno;
    WarnOnce(g_mlock_warning, "could not lock " + std::to_string(bytes) + " bytes of cache memory (" + strerror(err) +
                                  "; raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK); using unlocked memory");
  }
  Prefault(arena->base_, bytes);
  return arena;
}

PinnedArena::~PinnedArena() {
  if (base_ == nullptr) return;
  if (kind_ == ArenaKind::kCudaPinned) {
    CudaPinnedFree(base_);
  } else {
    ::munmap(base_, bytes());  // also unlocks
  }
}

std::vector<std::pair<uint32_t, uint32_t>> SlotChunks(uint64_t slot_bytes, uint32_t slots, uint64_t max_chunk_bytes) {
  std::vector<std::pair<uint32_t, uint32_t>> chunks;
  const uint64_t per_chunk = slot_bytes == 0 ? 0 : max_chunk_bytes / slot_bytes;
  if (per_chunk == 0) return chunks;
  for (uint64_t first = 0; first < slots; first += per_chunk) {
    chunks.emplace_back(static_cast<uint32_t>(first), static_cast<uint32_t>(std::min<uint64_t>(per_chunk, slots - first)));
  }
  return chunks;
}

std::vector<std::span<std::byte>> PinnedArena::RegistrationChunks() const {
  std::vector<std::span<std::byte>> out;
  for (auto [first, count] : SlotChunks(slot_bytes_, num_slots_, kMaxRegisteredBufferBytes)) {
    out.emplace_back(base_ + first * slot_bytes_, count * slot_bytes_);
  }
  return out;
}

}  // namespace es
