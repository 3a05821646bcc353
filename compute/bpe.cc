// BPE merging. The linear path rescans a rank array after each merge (tiktoken's approach: no allocation,
// cache-friendly for the short words that dominate); the heap path is Hugging Face's Word::merge_all for
// long words (a whole SentencePiece line is one word). Both merge the lowest-ranked adjacent pair, the
// leftmost on ties, until none is left, so they agree token for token.
#include "compute/bpe.h"

#include <algorithm>
#include <bit>
#include <functional>

#include "compute/unicode.h"

namespace es {
namespace {

constexpr uint32_t kNoRank = UINT32_MAX;
// Hash tables stay at most half full.
constexpr size_t kLoadFactorInverse = 2;

size_t TableCapacity(size_t entries) {
  return std::bit_ceil(std::max<size_t>(entries * kLoadFactorInverse, 16));
}

uint64_t MixPair(uint64_t key) {
  // A 64-bit multiplicative mix (the golden-ratio constant) then fold the high bits in.
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  key *= kGolden;
  return key ^ (key >> 29);
}

}  // namespace

Status TokenTable::Build(const std::vector<std::pair<std::string_view, TokenId>>& entries) {
  size_t total = 0;
  for (const auto& e : entries) total += e.first.size();
  if (total > UINT32_MAX) return Status::InvalidArgument("vocabulary too large");
  arena_.clear();
  arena_.reserve(total);
  entries_.clear();
  entries_.reserve(entries.size());
  const size_t capacity = TableCapacity(entries.size());
  slots_.assign(capacity, kEmptySlot);
  mask_ = capacity - 1;
  for (const auto& [key, id] : entries) {
    size_t slot = std::hash<std::string_view>()(key) & mask_;
    while (slots_[slot] != kEmptySlot) {
      const Entry& other = entries_[slots_[slot]];
      if (std::string_view(arena_.data() + other.offset, other.length) == key) {
        return Status::InvalidArgument("duplicate vocabulary entry '" + std::string(key) + "'");
      }
      slot = (slot + 1) & mask_;
    }
    slots_[slot] = static_cast<uint32_t>(entries_.size());
    entries_.push_back({static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id});
    arena_.append(key);
  }
  return Status::Ok();
}

std::optional<TokenId> TokenTable::Find(std::string_view key) const {
  if (slots_.empty()) return std::nullopt;
  size_t slot = std::hash<std::string_view>()(key) & mask_;
  while (true) {
    const uint32_t index = slots_[slot];
    if (index == kEmptySlot) return std::nullopt;
    const Entry& e = entries_[index];
    if (e.length == key.size() && std::string_view(arena_.data() + e.offset, e.length) == key) return e.id;
    slot = (slot + 1) & mask_;
  }
}

void MergeTable::Build(const std::vector<std::pair<uint64_t, Merge>>& entries) {
  const size_t capacity = TableCapacity(entries.size());
  slots_.assign(capacity, Slot{kEmptyKey, {0, 0}});
  mask_ = capacity - 1;
  for (const auto& [key, merge] : entries) {
    size_t slot = MixPair(key) & mask_;
    while (slots_[slot].key != kEmptyKey && slots_[slot].key != key) slot = (slot + 1) & mask_;
    if (slots_[slot].key == key) continue;
    slots_[slot] = {key, merge};
  }
}

const MergeTable::Merge* MergeTable::Find(TokenId left, TokenId right) const {
  const uint64_t key = Key(left, right);
  size_t slot = MixPair(key) & mask_;
  while (true) {
    const Slot& s = slots_[slot];
    if (s.key == key) return &s.merge;
    if (s.key == kEmptyKey) return nullptr;
    slot = (slot + 1) & mask_;
  }
}

Result<std::unique_ptr<BpeModel>> BpeModel::Build(
    Options options, const std::vector<std::pair<std::string_view, TokenId>>& keys,
    const std::vector<std::pair<TokenId, TokenId>>& merges, const std::vector<TokenId>& merged_ids,
    const std::array<std::optional<TokenId>, 256>& byte_symbols,
    const std::array<std::string, 256>& byte_symbol_text,
    const std::array<std::optional<TokenId>, 256>& fallback_ids) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->options_ = options;
  ES_RETURN_IF_ERROR(model->table_.Build(keys));
  if (merges.size() != merged_ids.size()) return Status::InvalidArgument("merges and merged ids differ in count");
  std::vector<std::pair<uint64_t, MergeTable::Merge>> entries;
  entries.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    entries.push_back({MergeTable::Key(merges[rank].first, merges[rank].second),
                       {static_cast<uint32_t>(rank), merged_ids[rank]}});
  }
  model->merges_.Build(entries);
  model->byte_symbols_ = byte_symbols;
  model->byte_symbol_text_ = byte_symbol_text;
  model->fallback_ids_ = fallback_ids;
  return model;
}

void BpeModel::InitialSymbols(std::string_view word, std::vector<TokenId>& ids) const {
  ids.clear();
  bool pending_unk = false;
  size_t pos = 0;
  while (pos < word.size()) {
    std::optional<TokenId> id;
    std::string_view symbol_text;
    if (options_.byte_level) {
      const auto byte = static_cast<unsigned char>(word[pos]);
      id = byte_symbols_[byte];
      symbol_text = byte_symbol_text_[byte];
      pos += 1;
    } else {
      const size_t start = pos;
      pos += unicode::SequenceLength(static_cast<unsigned char>(word[pos]));
      symbol_text = word.substr(start, pos - start);
      id = table_.Find(symbol_text);
    }
    if (id) {
      if (pending_unk) ids.push_back(*options_.unk_id);
      pending_unk = false;
      ids.push_back(*id);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char b : symbol_text) all = all && fallback_ids_[static_cast<unsigned char>(b)].has_value();
      if (all) {
        // As in Hugging Face, the byte tokens go in as they are; an unk pending before them stays pending.
        for (char b : symbol_text) ids.push_back(*fallback_ids_[static_cast<unsigned char>(b)]);
        continue;
      }
    }
    if (!options_.unk_id) continue;  // no unk token: the character is dropped, as Hugging Face does
    if (pending_unk && !options_.fuse_unk) ids.push_back(*options_.unk_id);
    pending_unk = true;
  }
  if (pending_unk) ids.push_back(*options_.unk_id);
}

void BpeModel::MergeLinear(BpeScratch& scratch) const {
  auto& ids = scratch.ids;
  auto& ranks = scratch.ranks;
  // ranks[i] is the rank of merging ids[i] and ids[i + 1].
  auto rank_of = [&](size_t i) {
    const MergeTable::Merge* m = merges_.Find(ids[i], ids[i + 1]);
    return m ? m->rank : kNoRank;
  };
  ranks.resize(ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) ranks[i] = rank_of(i);
  while (ids.size() > 1) {
    size_t best = 0;
    uint32_t best_rank = kNoRank;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < best_rank) {
        best_rank = ranks[i];
        best = i;
      }
    }
    if (best_rank == kNoRank) break;
    ids[best] = merges_.Find(ids[best], ids[best + 1])->merged;
    ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
    ranks.erase(ranks.begin() + static_cast<ptrdiff_t>(best));
    if (best > 0) ranks[best - 1] = rank_of(best - 1);
    if (best + 1 < ids.size()) ranks[best] = rank_of(best);
  }
}

void BpeModel::MergeHeap(BpeScratch& scratch) const {
  auto& ids = scratch.ids;
  auto& symbols = scratch.symbols;
  auto& heap = scratch.heap;
  const size_t n = ids.size();
  symbols.resize(n);
  for (size_t i = 0; i < n; ++i) {
    symbols[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  }
  // Min-heap on (rank, position): the lowest rank first, the leftmost among equal ranks.
  auto later = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  heap.clear();
  for (size_t i = 0; i + 1 < n; ++i) {
    if (const MergeTable::Merge* m = merges_.Find(ids[i], ids[i + 1])) {
      heap.push_back({m->rank, static_cast<uint32_t>(i), m->merged});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](uint32_t pos) {
    const auto& left = symbols[pos];
    if (left.next < 0) return;
    if (const MergeTable::Merge* m = merges_.Find(left.id, symbols[left.next].id)) {
      heap.push_back({m->rank, pos, m->merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    auto& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    // A stale entry: one side has merged since it was queued, so the pair (and its result) changed.
    const MergeTable::Merge* current = merges_.Find(left.id, symbols[left.next].id);
    if (current == nullptr || current->merged != top.merged) continue;
    auto& right = symbols[left.next];
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) push(static_cast<uint32_t>(left.prev));
    push(top.pos);
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

void BpeModel::EncodeUncached(std::string_view word, std::vector<TokenId>& out, BpeScratch& scratch) const {
  if (options_.ignore_merges) {
    if (auto id = table_.Find(word)) {
      out.push_back(*id);
      return;
    }
  }
  InitialSymbols(word, scratch.ids);
  if (scratch.ids.size() > 1) {
    if (scratch.ids.size() <= options_.linear_scan_limit) {
      MergeLinear(scratch);
    } else {
      MergeHeap(scratch);
    }
  }
  out.insert(out.end(), scratch.ids.begin(), scratch.ids.end());
}

void BpeModel::Encode(std::string_view word, std::vector<TokenId>& out, BpeScratch& scratch) const {
  if (word.empty()) return;
  if (!options_.use_cache || word.size() > kMaxCachedWordBytes) {
    EncodeUncached(word, out, scratch);
    return;
  }
  const size_t hash = StringHash()(word);
  CacheShard& shard = cache_[hash % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(word);
    if (it != shard.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  EncodeUncached(word, out, scratch);
  std::vector<TokenId> ids(out.begin() + static_cast<ptrdiff_t>(start), out.end());
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() >= kCacheEntriesPerShard) shard.map.clear();
  shard.map.emplace(std::string(word), std::move(ids));
}

}  // namespace es
