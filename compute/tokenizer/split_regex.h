// SplitRegex: the pre-tokenizer regex family (GPT-2, Qwen2/3, Llama 3, DeepSeek) with Oniguruma's semantics and
// ICU's Unicode classes; anything outside the family is NotSupported at compile time, never matched approximately.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/base/status.h"

namespace es {

// Per-thread working memory for matching (the backtracking stack), reused across calls.
struct MatchScratch {
  struct Frame {
    uint32_t pc;
    uint32_t kind;
    size_t pos;
    size_t aux;
  };
  std::vector<Frame> stack;
  uint64_t steps = 0;  // work done by the current match attempt
  // FindAll's memo of (instruction, position) states already explored without a match: a state stamped with
  // the current generation is skipped, which bounds the work of an attempt by the number of states (the
  // bounded backtracker of RE2 and Rust's regex). It covers the positions [memo_base, memo_base + memo_span).
  std::vector<uint32_t> memo;
  uint32_t memo_generation = 0;
  size_t memo_base = 0;
  size_t memo_span = 0;
  size_t memo_stride = 0;  // the program's size
  // Steps of the attempts that failed since the last match: FindAll turns to the memo once they pass a
  // threshold, so that the ordinary patterns, whose attempts take a few steps, never pay for it.
  uint64_t failed_steps = 0;
  bool memo_dirty = false;  // stamps of the current generation were written since the last match
};

// Compiled once, immutable; matching is thread-safe when each thread passes its own MatchScratch. Constructs
// refused: backreferences, lookbehind, \w and \b, anchors, possessive and atomic groups, POSIX brackets,
// scripts in \p{..}, case-sensitive classes under (?i).
class SplitRegex {
 public:
  // `specialize`: patterns of the Qwen2/Qwen3/Llama 3 family (recognised by their exact text) run on a
  // hand-written matcher with the same results as the generic one and several times faster. Tests turn it
  // off to compare the two.
  static Result<SplitRegex> Compile(std::string_view pattern, bool specialize = true);
  // A pattern that matches `literal` exactly (the {"String": ...} form of a split pattern).
  static SplitRegex Literal(std::string_view literal);

  // Length of the match anchored at `pos` (text must be valid UTF-8 and pos on a character boundary), or
  // kNoMatch, or kBudgetExceeded when backtracking ran past its limit (only pathological patterns do).
  // A zero-length match is possible for patterns that allow it.
  static constexpr size_t kNoMatch = static_cast<size_t>(-1);
  static constexpr size_t kBudgetExceeded = static_cast<size_t>(-2);
  size_t MatchAt(std::string_view text, size_t pos, MatchScratch& scratch) const;

  // All matches as Rust onig's find_iter reports them: leftmost-first, non-overlapping, an empty match not
  // allowed right where the previous match ended. Appends [begin, end) pairs to `out`. ResourceExhausted
  // when a match attempt backtracks past the limit (Oniguruma has the same kind of retry limit).
  [[nodiscard]] Status FindAll(std::string_view text, MatchScratch& scratch,
                               std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }
  // Whether the hand-written Qwen-family matcher runs this pattern.
  bool specialized() const { return qwen_family_digits_ != 0; }

  // Implementation types, public so that the compiler in split_regex.cc can build them.
  struct ClassItem {
    enum class Kind : uint8_t { kRange, kCategories, kWhiteSpace };
    Kind kind;
    bool negated;
    char32_t lo, hi;       // kRange
    uint32_t categories;   // kCategories: a general-category mask
  };
  struct CharClass {
    std::vector<ClassItem> items;
    bool negated = false;
    uint64_t ascii[2] = {0, 0};  // membership of code points < 128, precomputed (after negation)
    bool Contains(char32_t c) const;
    bool ContainsSlow(char32_t c) const;
  };
  // One-code-point matcher: a literal (optionally case-folded), a class, or '.' (anything but \n).
  struct Atom {
    enum class Kind : uint8_t { kChar, kClass, kAny };
    Kind kind;
    bool fold;
    uint32_t value;  // code point (folded when `fold`) or class index
  };
  enum class Op : uint8_t { kAtom, kRepeat, kSplit, kJmp, kLook, kMatch };
  struct Inst {
    Op op;
    bool greedy = true;  // kRepeat
    bool negate = false;  // kLook: (?!...)
    Atom atom{};          // kAtom, kRepeat
    uint32_t x = 0;       // kSplit: preferred branch; kJmp: target; kLook: first pc of the body
    uint32_t y = 0;       // kSplit: other branch; kLook: pc after the body
    uint32_t min = 0, max = 0;  // kRepeat
    uint32_t filter = kNoFilter;  // kSplit: FirstSet of branch x, to skip it without backtracking
  };
  static constexpr uint32_t kNoFilter = UINT32_MAX;
  // The characters a match from some point can begin with: ASCII exactly, anything else as one flag.
  struct FirstSet {
    uint64_t ascii[2] = {0, 0};
    bool non_ascii = false;
    bool nullable = false;  // may match without consuming: no filtering possible
  };

 private:
  friend class RegexCompiler;
  bool AtomMatches(const Atom& atom, char32_t c) const;
  size_t MatchQwenFamily(std::string_view text, size_t pos) const;
  // kBudgetExceeded past `max_steps`. kMemo: consult and fill scratch.memo (FindAll's top-level attempts only;
  // a lookaround body succeeds without ending the match, so its states are not failures).
  template <bool kMemo>
  size_t Run(uint32_t start_pc, std::string_view text, size_t pos, MatchScratch& scratch, uint64_t max_steps) const;
  void ResetMemo(MatchScratch& scratch, size_t base, size_t text_size) const;

  std::string pattern_;
  // 0: use the program. Otherwise the specialized matcher, with numbers matched in runs of at most this.
  uint32_t qwen_family_digits_ = 0;
  std::vector<Inst> program_;
  std::vector<CharClass> classes_;
  std::vector<FirstSet> first_sets_;
};

}  // namespace es
