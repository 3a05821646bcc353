// BpeModel: the "BPE" model of tokenizer.json. Splits one pre-tokenized word into its initial symbols (bytes for
// byte-level vocabularies, UTF-8 characters otherwise, with byte fallback and unknown-token handling) and
// applies the merges lowest rank first, leftmost first on ties, exactly as Hugging Face tokenizers does.
// Immutable after Build apart from its word cache, which is internally locked: Encode is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "compute/token.h"
#include "store/status.h"

namespace es {

// An open-addressing map from byte strings to token ids, built once. Keys are copied into one arena.
class TokenTable {
 public:
  // Fails with InvalidArgument on a duplicate key.
  Status Build(const std::vector<std::pair<std::string_view, TokenId>>& entries);
  std::optional<TokenId> Find(std::string_view key) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint32_t offset;
    uint32_t length;
    TokenId id;
  };
  static constexpr uint32_t kEmptySlot = UINT32_MAX;
  std::string arena_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> slots_;  // index into entries_, or kEmptySlot
  size_t mask_ = 0;
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

// Per-call working memory, reused across words.
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
    uint32_t rank;
    uint32_t pos;
    TokenId merged;
  };
  std::vector<Candidate> heap;
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

  // Word cache: most words repeat, and a hit skips the merge loop. Sharded so that threads rarely contend;
  // a full shard is cleared rather than evicted piecemeal (cheap, and the working set refills it).
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheEntriesPerShard = 4096;
  static constexpr size_t kMaxCachedWordBytes = 256;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  struct CacheShard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<TokenId>, StringHash, std::equal_to<>> map;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace es
