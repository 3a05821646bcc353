// Checksums of segment records: XXH3-64 (seed 0) with the CPU's best vector unit chosen at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace es {

uint64_t Xxh3(std::span<const std::byte> data);

// Incremental XXH3-64: Update() any number of times, Digest() equals Xxh3() over the concatenation.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void Reset();
  void Update(std::span<const std::byte> data);
  uint64_t Digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace es
