// BpeModel: tokenizer.json's "BPE" model, merging one word's symbols lowest rank first, leftmost on ties,
// exactly as Hugging Face tokenizers does. Immutable after Build; Encode is thread-safe (caches are per thread).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "compute/tokenizer/token.h"
#include "store/base/status.h"

namespace es {

// A fast 64-bit hash of a short byte string (the keys here are tokens and words, mostly under 16 bytes).
uint64_t HashBytes(std::string_view bytes);

// An open-addressing map from byte strings to token ids, built once. Keys are copied into one arena.
class TokenTable {
 public:
  // Fails with InvalidArgument on a duplicate key.
  Status Build(const std::vector<std::pair<std::string_view, TokenId>>& entries);
  std::optional<TokenId> Find(std::string_view key) const;
  size_t size() const { return size_; }

 private:
  // Keys of up to eight bytes (most tokens) sit in the slot itself and the upper hash bits ride along, so a
  // lookup usually touches one cache line: at 150k tokens every other access is a cache miss.
  static constexpr size_t kInlineKeyBytes = sizeof(uint64_t);
  struct Slot {
    uint64_t prefix;  // the key's first bytes, zero-padded
    uint32_t tag;     // upper hash bits
    TokenId id;
    uint32_t offset;  // into arena_, for keys longer than kInlineKeyBytes
    uint32_t length;  // kEmpty: free slot
  };
  static constexpr uint32_t kEmpty = UINT32_MAX;
  static uint64_t Prefix(std::string_view key);
  std::string arena_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// (left id, right id) -> (rank, merged id), open addressing.
class MergeTable {
 public:
  struct Merge {
    uint32_t rank;
    TokenId merged;
  };
  // Later duplicates of a pair are ignored (the first, lowest rank, wins).
  void Build(const std::vector<std::pair<uint64_t, Merge>>& entries);
  const Merge* Find(TokenId left, TokenId right) const;
  static uint64_t Key(TokenId left, TokenId right) { return (uint64_t{left} << 32) | right; }

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static constexpr uint64_t kEmptyKey = UINT64_MAX;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Recently encoded words and their ids, so that a repeated word skips the merge loop. One per thread (it
// lives in BpeScratch), hence lock-free; it belongs to one model at a time and empties itself when a thread
// switches models. Bounded: when its table or arenas fill up it is cleared and refills from the working set.
class WordCache {
 public:
  // On a hit appends the ids to `out` and returns true.
  bool Lookup(uint64_t owner, std::string_view word, uint64_t hash, std::vector<TokenId>& out) const;
  void Insert(uint64_t owner, std::string_view word, uint64_t hash, const TokenId* ids, size_t count);

 private:
  static constexpr size_t kSlots = 1 << 15;  // at most half of them used
  static constexpr size_t kMaxKeyBytes = 1 << 20;
  static constexpr size_t kMaxIds = 1 << 18;
  static constexpr size_t kInlineKeyBytes = 20;
  static constexpr size_t kInlineIds = 6;
  // One cache line: a typical word and its ids live in the slot itself, so a hit costs one memory access.
  struct Slot {
    uint64_t hash;        // 0: empty
    uint32_t key_offset;  // into keys_, when the key is longer than kInlineKeyBytes
    uint32_t ids_offset;  // into ids_, when there are more than kInlineIds
    uint16_t key_length;
    uint16_t id_count;
    char key[kInlineKeyBytes];
    TokenId ids[kInlineIds];
  };
  static_assert(sizeof(Slot) == 64);
  void Reset(uint64_t owner);

  uint64_t owner_ = 0;
  size_t used_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<TokenId> ids_;
};

// Per-thread working memory, reused across words and calls; also holds the thread's word cache.
struct BpeScratch {
  std::vector<TokenId> ids;
  std::vector<uint32_t> ranks;
  struct Symbol {
    TokenId id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  struct Candidate {
    uint64_t key;  // rank << 32 | position of the left symbol
    TokenId merged;
  };
  std::vector<Candidate> heap;
  WordCache cache;
};

class BpeModel {
 public:
  struct Options {
    // Symbols are single bytes and the vocabulary's keys are raw bytes (GPT-2 ByteLevel); otherwise symbols
    // are UTF-8 characters and keys are the tokens' text.
    bool byte_level = false;
    bool byte_fallback = false;  // unknown characters become <0xNN> byte tokens when all exist
    bool fuse_unk = false;       // consecutive unknown characters share one unk token
    bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
    std::optional<TokenId> unk_id;
    // Words of at most this many symbols merge by rescanning a rank array (fastest for short words); longer
    // words use a priority queue. Both give identical results; tests pin that down by moving the limit.
    size_t linear_scan_limit = 48;
    bool use_cache = true;
  };

  // `keys[id]` is the encoding key of token `id` (raw bytes in byte-level mode) or nullopt for an id that
  // has no key (a hole, or a token outside the byte-level alphabet). `merges` are (left, right) id pairs
  // by rank; `merged_ids[i]` is the id of their concatenation. `byte_symbols[b]` (byte-level mode) or the
  // key table (character mode) gives the initial symbols.
  static Result<std::unique_ptr<BpeModel>> Build(Options options,
                                                 const std::vector<std::pair<std::string_view, TokenId>>& keys,
                                                 const std::vector<std::pair<TokenId, TokenId>>& merges,
                                                 const std::vector<TokenId>& merged_ids,
                                                 const std::array<std::optional<TokenId>, 256>& byte_symbols,
                                                 const std::array<std::string, 256>& byte_symbol_text,
                                                 const std::array<std::optional<TokenId>, 256>& fallback_ids);

  // Appends the ids of `word` to `out`.
  void Encode(std::string_view word, std::vector<TokenId>& out, BpeScratch& scratch) const;

  const Options& options() const { return options_; }
  std::optional<TokenId> Find(std::string_view key) const { return table_.Find(key); }

 private:
  BpeModel() = default;
  void InitialSymbols(std::string_view word, std::vector<TokenId>& ids) const;
  void MergeLinear(BpeScratch& scratch) const;
  void MergeHeap(BpeScratch& scratch) const;
  void EncodeUncached(std::string_view word, std::vector<TokenId>& out, BpeScratch& scratch) const;

  Options options_;
  TokenTable table_;
  MergeTable merges_;
  std::array<std::optional<TokenId>, 256> byte_symbols_{};
  std::array<std::string, 256> byte_symbol_text_{};  // the mapped character of each byte, for fallback
  std::array<std::optional<TokenId>, 256> fallback_ids_{};
  std::array<std::optional<TokenId>, 128> ascii_symbols_{};  // character mode: ids of one-byte characters

  // Words of up to two bytes encode faster than a cache lookup; long words rarely repeat.
  static constexpr size_t kMinCachedWordBytes = 3;
  static constexpr size_t kMaxCachedWordBytes = 256;
  uint64_t cache_owner_ = 0;  // unique per model, so that a thread's WordCache knows whose words it holds
};

}  // namespace es
