// XXH3 through libxxhash's x86 dispatcher (SSE2/AVX2/AVX-512 picked at first use).
#include "store/base/checksum.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t's definition, to keep the state inline
#include <xxhash.h>
#include <xxh_x86dispatch.h>

namespace es {

uint64_t Xxh3(std::span<const std::byte> data) { return XXH3_64bits_dispatch(data.data(), data.size()); }

struct Xxh3Stream::State {
  XXH3_state_t xxh;
};

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->xxh); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Reset() { XXH3_64bits_reset(&state_->xxh); }

void Xxh3Stream::Update(std::span<const std::byte> data) {
  XXH3_64bits_update_dispatch(&state_->xxh, data.data(), data.size());
}

uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(&state_->xxh); }

}  // namespace es
