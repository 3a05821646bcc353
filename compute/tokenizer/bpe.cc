// BPE merging: a rescanned rank array for short words (tiktoken's way), a heap for long ones (tokenizers'
// Word::merge_all). Both merge the lowest-ranked leftmost pair until none is left, so they agree exactly.
#include "compute/tokenizer/bpe.h"

#include <algorithm>
#include <bit>
#include <atomic>
#include <cstring>

#include "compute/tokenizer/unicode.h"

namespace es {
namespace {

constexpr uint32_t kNoRank = UINT32_MAX;
// Hash tables stay at most two thirds full (linear probing stays short; the tables stay small).
constexpr size_t kMinTableCapacity = 16;

size_t TableCapacity(size_t entries) {
  return std::bit_ceil(std::max<size_t>(entries + entries / 2, kMinTableCapacity));
}

// The golden-ratio multiplier and MurmurHash3's 64-bit finalizer: cheap and well mixed in the low bits.
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
uint64_t Finalize(uint64_t h) {
  constexpr uint64_t kMurmurMul1 = 0xFF51AFD7ED558CCDull;
  constexpr uint64_t kMurmurMul2 = 0xC4CEB9FE1A85EC53ull;
  constexpr int kShift = 33;
  h ^= h >> kShift;
  h *= kMurmurMul1;
  h ^= h >> kShift;
  h *= kMurmurMul2;
  h ^= h >> kShift;
  return h;
}

uint64_t MixPair(uint64_t key) { return Finalize(key * kGolden); }

std::atomic<uint64_t> next_model_id{1};

}  // namespace

uint64_t HashBytes(std::string_view bytes) {
  uint64_t h = bytes.size() * kGolden;
  size_t i = 0;
  for (; i + sizeof(uint64_t) <= bytes.size(); i += sizeof(uint64_t)) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, sizeof(word));
    h = (h ^ word) * kGolden;
    h ^= h >> 32;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  return Finalize(h ^ tail);
}

void WordCache::Reset(uint64_t owner) {
  owner_ = owner;
  used_ = 0;
  slots_.assign(kSlots, Slot{});
  keys_.clear();
  ids_.clear();
}

bool WordCache::Lookup(uint64_t owner, std::string_view word, uint64_t hash, std::vector<TokenId>& out) const {
  if (owner != owner_ || slots_.empty()) return false;
  hash |= 1;  // 0 marks an empty slot
  for (size_t slot = hash & (kSlots - 1);; slot = (slot + 1) & (kSlots - 1)) {
    const Slot& s = slots_[slot];
    if (s.hash == 0) return false;
    if (s.hash != hash || s.key_length != word.size()) continue;
    const char* key = s.key_length <= kInlineKeyBytes ? s.key : keys_.data() + s.key_offset;
    if (std::memcmp(key, word.data(), word.size()) != 0) continue;
    const TokenId* ids = s.id_count <= kInlineIds ? s.ids : ids_.data() + s.ids_offset;
    out.insert(out.end(), ids, ids + s.id_count);
    return true;
  }
}

void WordCache::Insert(uint64_t owner, std::string_view word, uint64_t hash, const TokenId* ids, size_t count) {
  if (owner != owner_ || slots_.empty() || used_ * 2 >= kSlots || keys_.size() + word.size() > kMaxKeyBytes ||
      ids_.size() + count > kMaxIds) {
    Reset(owner);
  }
  hash |= 1;
  size_t index = hash & (kSlots - 1);
  while (slots_[index].hash != 0) index = (index + 1) & (kSlots - 1);
  Slot& slot = slots_[index];
  slot.hash = hash;
  slot.key_length = static_cast<uint16_t>(word.size());
  slot.id_count = static_cast<uint16_t>(count);
  if (word.size() <= kInlineKeyBytes) {
    std::memcpy(slot.key, word.data(), word.size());
  } else {
    slot.key_offset = static_cast<uint32_t>(keys_.size());
    keys_.append(word);
  }
  if (count <= kInlineIds) {
    std::memcpy(slot.ids, ids, count * sizeof(TokenId));
  } else {
    slot.ids_offset = static_cast<uint32_t>(ids_.size());
    ids_.insert(ids_.end(), ids, ids + count);
  }
  ++used_;
}

uint64_t TokenTable::Prefix(std::string_view key) {
  uint64_t prefix = 0;
  std::memcpy(&prefix, key.data(), std::min(key.size(), kInlineKeyBytes));
  return prefix;
}

Status TokenTable::Build(const std::vector<std::pair<std::string_view, TokenId>>& entries) {
  size_t total = 0;
  for (const auto& e : entries) total += e.first.size();
  if (total > UINT32_MAX) return Status::InvalidArgument("vocabulary too large");
  arena_.clear();
  arena_.reserve(total);
  const size_t capacity = TableCapacity(entries.size());
  slots_.assign(capacity, Slot{0, 0, 0, 0, kEmpty});
  mask_ = capacity - 1;
  size_ = 0;
  for (const auto& [key, id] : entries) {
    if (key.size() >= kEmpty) return Status::InvalidArgument("vocabulary entry too long");
    const uint64_t hash = HashBytes(key);
    const auto tag = static_cast<uint32_t>(hash >> 32);
    const uint64_t prefix = Prefix(key);
    size_t slot = hash & mask_;
    for (; slots_[slot].length != kEmpty; slot = (slot + 1) & mask_) {
      const Slot& s = slots_[slot];
      if (s.tag == tag && s.length == key.size() && s.prefix == prefix &&
          (key.size() <= kInlineKeyBytes || std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0)) {
        return Status::InvalidArgument("duplicate vocabulary entry '" + std::string(key) + "'");
      }
    }
    uint32_t offset = 0;
    if (key.size() > kInlineKeyBytes) {
      offset = static_cast<uint32_t>(arena_.size());
      arena_.append(key);
    }
    slots_[slot] = {prefix, tag, id, offset, static_cast<uint32_t>(key.size())};
    ++size_;
  }
  return Status::Ok();
}

std::optional<TokenId> TokenTable::Find(std::string_view key) const {
  if (slots_.empty()) return std::nullopt;
  const uint64_t hash = HashBytes(key);
  const auto tag = static_cast<uint32_t>(hash >> 32);
  const uint64_t prefix = Prefix(key);
  for (size_t slot = hash & mask_;; slot = (slot + 1) & mask_) {
    const Slot& s = slots_[slot];
    if (s.length == kEmpty) return std::nullopt;
    if (s.tag != tag || s.length != key.size() || s.prefix != prefix) continue;
    if (key.size() <= kInlineKeyBytes || std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
      return s.id;
    }
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
  model->cache_owner_ = next_model_id.fetch_add(1);
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
  for (unsigned b = 0; b < unicode::kAsciiLimit; ++b) {
    const char c = static_cast<char>(b);
    model->ascii_symbols_[b] = model->table_.Find(std::string_view(&c, 1));
  }
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
      const auto lead = static_cast<unsigned char>(word[pos]);
      pos += unicode::SequenceLength(lead);
      symbol_text = word.substr(start, pos - start);
      id = lead < unicode::kAsciiLimit ? ascii_symbols_[lead] : table_.Find(symbol_text);
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
  // Min-heap on (rank, position), packed into one integer: the lowest rank first, the leftmost on ties.
  auto later = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) { return a.key > b.key; };
  auto key = [](uint32_t rank, uint32_t pos) { return (uint64_t{rank} << 32) | pos; };
  heap.clear();
  for (size_t i = 0; i + 1 < n; ++i) {
    if (const MergeTable::Merge* m = merges_.Find(ids[i], ids[i + 1])) {
      heap.push_back({key(m->rank, static_cast<uint32_t>(i)), m->merged});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](uint32_t pos) {
    const auto& left = symbols[pos];
    if (left.next < 0) return;
    if (const MergeTable::Merge* m = merges_.Find(left.id, symbols[left.next].id)) {
      heap.push_back({key(m->rank, pos), m->merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    const auto pos = static_cast<uint32_t>(top.key);
    auto& left = symbols[pos];
    if (!left.alive || left.next < 0) continue;
    // A stale entry: one side has merged since it was queued, so the pair (and its result) changed.
    const MergeTable::Merge* current = merges_.Find(left.id, symbols[left.next].id);
    if (current == nullptr || current->merged != top.merged) continue;
    auto& right = symbols[left.next];
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = static_cast<int32_t>(pos);
    if (left.prev >= 0) push(static_cast<uint32_t>(left.prev));
    push(pos);
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
  if (!options_.use_cache || word.size() < kMinCachedWordBytes || word.size() > kMaxCachedWordBytes) {
    EncodeUncached(word, out, scratch);
    return;
  }
  const uint64_t hash = HashBytes(word);
  if (scratch.cache.Lookup(cache_owner_, word, hash, out)) return;
  const size_t start = out.size();
  EncodeUncached(word, out, scratch);
  scratch.cache.Insert(cache_owner_, word, hash, out.data() + start, out.size() - start);
}

}  // namespace es
