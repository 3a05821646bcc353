// Parser, compiler and backtracking matcher for the split-regex family, plus a hand-written matcher for the
// Qwen/Llama 3 patterns. Oniguruma semantics: ordered alternation, \s = White_Space, \p{..} = general category.
#include "compute/tokenizer/split_regex.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <limits>

#include "compute/tokenizer/unicode.h"

namespace es {
namespace {

constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();
// Bounds that keep a hostile pattern from blowing up the compiled program.
constexpr size_t kMaxProgramSize = 1 << 16;
constexpr uint32_t kMaxCountedRepeat = 1000;
constexpr size_t kMaxNesting = 64;
constexpr size_t kFirstSetMaxDepth = 256;
constexpr size_t kFirstSetBudget = 4096;
// Backtracking steps allowed for one match attempt (Oniguruma's default retry limit is 10^7): the patterns of
// the family need a few per character; a pathological one fails with ResourceExhausted instead of hanging.
constexpr uint64_t kMaxStepsPerMatch = 10'000'000;
// States FindAll's memo covers (4 bytes each): with the GPT-2 pattern, some 16k characters at a time.
constexpr size_t kMemoStates = size_t{1} << 20;
// Steps (in failed attempts since the last match, plus the current one) before FindAll turns to the memo.
constexpr uint64_t kMemoAfterSteps = 2048;
// Explored positions a greedy repeat gives back per counted step.
constexpr uint32_t kSkipsPerStep = 32;

constexpr uint32_t kFrameBranch = 0;
constexpr uint32_t kFrameGreedy = 1;
constexpr uint32_t kFrameLazy = 2;

// Categories whose membership does not change under case mapping, so that a class made of them means the
// same with or without (?i).
constexpr uint32_t kMajorCategoryMasks[] = {U_GC_L_MASK, U_GC_M_MASK, U_GC_N_MASK, U_GC_P_MASK,
                                            U_GC_S_MASK, U_GC_Z_MASK, U_GC_C_MASK};

bool IsCaseClosedMask(uint32_t mask) {
  uint32_t covered = 0;
  for (uint32_t major : kMajorCategoryMasks) {
    if ((mask & major) == major) covered |= major;
  }
  return covered == mask;
}

// The split patterns of Qwen2/Qwen3 and of Llama 3 (cl100k), which differ only in how many digits make
// one piece. MatchQwenFamily implements exactly these two.
constexpr std::string_view kQwenFamilyPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3FamilyPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr uint32_t kLlama3DigitRun = 3;

// What the Qwen-family pattern asks of a character.
constexpr uint8_t kKindLetter = 1;    // \p{L}
constexpr uint8_t kKindNumber = 2;    // \p{N}
constexpr uint8_t kKindSpace = 4;     // \s
constexpr uint8_t kKindNewline = 8;   // \r or \n (also kKindSpace)

uint8_t CharKind(char32_t c) {
  static const std::array<uint8_t, unicode::kAsciiLimit> ascii = [] {
    std::array<uint8_t, unicode::kAsciiLimit> t{};
    for (char32_t a = 0; a < unicode::kAsciiLimit; ++a) {
      if (unicode::IsLetter(a)) t[a] = kKindLetter;
      else if (unicode::IsNumber(a)) t[a] = kKindNumber;
      else if (unicode::IsWhiteSpace(a)) t[a] = kKindSpace;
    }
    t['\r'] |= kKindNewline;
    t['\n'] |= kKindNewline;
    return t;
  }();
  if (c < unicode::kAsciiLimit) return ascii[c];
  const uint32_t mask = unicode::GeneralCategoryMask(c);
  if (mask & U_GC_L_MASK) return kKindLetter;
  if (mask & U_GC_N_MASK) return kKindNumber;
  return unicode::IsWhiteSpace(c) ? kKindSpace : 0;
}

// [^\s\p{L}\p{N}]: punctuation, symbols, controls that are not white space, ...
bool IsOther(uint8_t kind) { return (kind & (kKindLetter | kKindNumber | kKindSpace)) == 0; }

char32_t FoldForContraction(char32_t c) {
  if (c < unicode::kAsciiLimit) return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
  return unicode::SimpleCaseFold(c);  // U+017F LONG S folds to 's', as Oniguruma's (?i) matches it
}

}  // namespace

bool SplitRegex::CharClass::ContainsSlow(char32_t c) const {
  bool any = false;
  uint32_t mask = 0;
  bool have_mask = false;
  for (const ClassItem& item : items) {
    bool in = false;
    switch (item.kind) {
      case ClassItem::Kind::kRange: in = c >= item.lo && c <= item.hi; break;
      case ClassItem::Kind::kCategories:
        if (!have_mask) {
          mask = unicode::GeneralCategoryMask(c);
          have_mask = true;
        }
        in = (mask & item.categories) != 0;
        break;
      case ClassItem::Kind::kWhiteSpace: in = unicode::IsWhiteSpace(c); break;
    }
    if (in != item.negated) {
      any = true;
      break;
    }
  }
  return any != negated;
}

bool SplitRegex::CharClass::Contains(char32_t c) const {
  if (c < unicode::kAsciiLimit) return (ascii[c >> 6] >> (c & 63)) & 1;
  return ContainsSlow(c);
}

// The parse tree. Kept private to this file: only the compiled program outlives Compile.
struct RegexNode {
  enum class Kind : uint8_t { kEmpty, kAtom, kConcat, kAlt, kRepeat, kLook };
  Kind kind = Kind::kEmpty;
  SplitRegex::Atom atom{};
  std::vector<RegexNode> kids;
  uint32_t min = 0, max = 0;
  bool greedy = true;
  bool negate = false;
};

class RegexCompiler {
 public:
  RegexCompiler(std::string_view pattern, SplitRegex& out) : pattern_(pattern), out_(out) {}

  Status Compile() {
    if (!unicode::IsValidUtf8(pattern_)) return Status::InvalidArgument("regex is not valid UTF-8");
    bool fold = false;
    RegexNode root;
    ES_RETURN_IF_ERROR(ParseAlt(fold, 0, root));
    if (pos_ != pattern_.size()) return Error("unbalanced ')'");
    ES_RETURN_IF_ERROR(Emit(root));
    SplitRegex::Inst match;
    match.op = SplitRegex::Op::kMatch;
    out_.program_.push_back(match);
    if (out_.program_.size() > kMaxProgramSize) return Error("pattern too large");
    AddSplitFilters();
    return Status::Ok();
  }

 private:
  // First sets let a Split skip a branch that cannot match the next character without pushing and popping
  // a backtrack frame, which is most of the work of an ordered alternation.
  void AddSplitFilters() {
    std::vector<bool> visiting(out_.program_.size(), false);  // all false again after every FirstOf
    for (uint32_t pc = 0; pc < out_.program_.size(); ++pc) {
      if (out_.program_[pc].op != SplitRegex::Op::kSplit) continue;
      size_t budget = kFirstSetBudget;
      const SplitRegex::FirstSet first = FirstOf(out_.program_[pc].x, visiting, 0, budget);
      if (first.nullable) continue;
      out_.program_[pc].filter = static_cast<uint32_t>(out_.first_sets_.size());
      out_.first_sets_.push_back(first);
    }
  }

  static void Merge(SplitRegex::FirstSet& into, const SplitRegex::FirstSet& from) {
    into.ascii[0] |= from.ascii[0];
    into.ascii[1] |= from.ascii[1];
    into.non_ascii |= from.non_ascii;
    into.nullable |= from.nullable;
  }

  SplitRegex::FirstSet AtomFirst(const SplitRegex::Atom& atom) const {
    SplitRegex::FirstSet f;
    auto set = [&](char32_t c) { f.ascii[c >> 6] |= uint64_t{1} << (c & 63); };
    switch (atom.kind) {
      case SplitRegex::Atom::Kind::kAny:
        f.ascii[0] = f.ascii[1] = ~uint64_t{0};
        f.non_ascii = true;
        break;
      case SplitRegex::Atom::Kind::kClass: {
        const auto& cls = out_.classes_[atom.value];
        f.ascii[0] = cls.ascii[0];
        f.ascii[1] = cls.ascii[1];
        f.non_ascii = true;  // not worth computing exactly
        break;
      }
      case SplitRegex::Atom::Kind::kChar:
        if (!atom.fold) {
          if (atom.value < unicode::kAsciiLimit) set(atom.value);
          else f.non_ascii = true;
          break;
        }
        // Folded: every ASCII character with the same fold, and non-ASCII ones (such as U+017F for 's'). The
        // ASCII folds are looked up once: this runs for every visit of the first-set walk.
        static const std::array<char32_t, unicode::kAsciiLimit> kAsciiFolds = [] {
          std::array<char32_t, unicode::kAsciiLimit> folds{};
          for (char32_t c = 0; c < unicode::kAsciiLimit; ++c) folds[c] = unicode::SimpleCaseFold(c);
          return folds;
        }();
        for (char32_t c = 0; c < unicode::kAsciiLimit; ++c) {
          if (kAsciiFolds[c] == atom.value) set(c);
        }
        f.non_ascii = true;
        break;
    }
    return f;
  }

  // `depth` and `budget` bound the walk (a chain of optional atoms is deep, nested optional alternatives
  // branch exponentially); running out only means "no filter", never a wrong one.
  SplitRegex::FirstSet FirstOf(uint32_t pc, std::vector<bool>& visiting, size_t depth, size_t& budget) const {
    using Op = SplitRegex::Op;
    SplitRegex::FirstSet f;
    if (visiting[pc] || depth > kFirstSetMaxDepth || budget == 0) {  // a loop back, or too much work
      f.nullable = true;
      return f;
    }
    --budget;
    visiting[pc] = true;
    const SplitRegex::Inst& inst = out_.program_[pc];
    switch (inst.op) {
      case Op::kAtom: f = AtomFirst(inst.atom); break;
      case Op::kRepeat:
        f = AtomFirst(inst.atom);
        if (inst.min == 0) Merge(f, FirstOf(pc + 1, visiting, depth + 1, budget));
        break;
      case Op::kSplit:
        f = FirstOf(inst.x, visiting, depth + 1, budget);
        Merge(f, FirstOf(inst.y, visiting, depth + 1, budget));
        break;
      case Op::kJmp: f = FirstOf(inst.x, visiting, depth + 1, budget); break;
      case Op::kLook: f = FirstOf(inst.y, visiting, depth + 1, budget); break;  // consumes nothing
      case Op::kMatch: f.nullable = true; break;
    }
    visiting[pc] = false;
    return f;
  }

  Status Error(std::string_view what) const {
    return Status::InvalidArgument("regex '" + std::string(pattern_) + "' at offset " + std::to_string(pos_) +
                                   ": " + std::string(what));
  }
  Status Unsupported(std::string_view what) const {
    return Status::NotSupported("regex '" + std::string(pattern_) + "': " + std::string(what) +
                                " is not supported");
  }

  bool AtEnd() const { return pos_ >= pattern_.size(); }
  char Peek() const { return pattern_[pos_]; }
  bool Consume(std::string_view s) {
    if (pattern_.substr(pos_, s.size()) == s) {
      pos_ += s.size();
      return true;
    }
    return false;
  }
  char32_t NextCodePoint() { return unicode::DecodeNext(pattern_, pos_); }

  Status ParseAlt(bool& fold, size_t depth, RegexNode& out) {
    if (depth > kMaxNesting) return Error("nesting too deep");
    std::vector<RegexNode> branches(1);
    ES_RETURN_IF_ERROR(ParseConcat(fold, depth, branches.back()));
    while (!AtEnd() && Peek() == '|') {
      ++pos_;
      branches.emplace_back();
      ES_RETURN_IF_ERROR(ParseConcat(fold, depth, branches.back()));
    }
    if (branches.size() == 1) {
      out = std::move(branches[0]);
    } else {
      out.kind = RegexNode::Kind::kAlt;
      out.kids = std::move(branches);
    }
    return Status::Ok();
  }

  Status ParseConcat(bool& fold, size_t depth, RegexNode& out) {
    out.kind = RegexNode::Kind::kConcat;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      if (Consume("(?i)")) {
        fold = true;
        continue;
      }
      if (Consume("(?-i)")) {
        fold = false;
        continue;
      }
      RegexNode atom;
      ES_RETURN_IF_ERROR(ParseAtom(fold, depth, atom));
      ES_RETURN_IF_ERROR(ParseQuantifier(atom));
      out.kids.push_back(std::move(atom));
    }
    return Status::Ok();
  }

  Status ParseQuantifier(RegexNode& node) {
    if (AtEnd()) return Status::Ok();
    uint32_t min = 0, max = 0;
    const char c = Peek();
    if (c == '?') {
      min = 0, max = 1;
      ++pos_;
    } else if (c == '*') {
      min = 0, max = kUnbounded;
      ++pos_;
    } else if (c == '+') {
      min = 1, max = kUnbounded;
      ++pos_;
    } else if (c == '{') {
      const size_t save = pos_;
      if (!ParseInterval(min, max)) {
        pos_ = save;  // not an interval: Oniguruma reads the '{' as a literal
        return Status::Ok();
      }
    } else {
      return Status::Ok();
    }
    if (node.kind == RegexNode::Kind::kLook) return Error("quantifier after a lookahead");
    bool greedy = true;
    if (!AtEnd() && Peek() == '?') {
      greedy = false;
      ++pos_;
    } else if (!AtEnd() && Peek() == '+') {
      return Unsupported("possessive quantifier");
    }
    if (!AtEnd() && (Peek() == '?' || Peek() == '*' || Peek() == '+' || Peek() == '{')) {
      return Unsupported("nested quantifier");
    }
    RegexNode rep;
    rep.kind = RegexNode::Kind::kRepeat;
    rep.min = min;
    rep.max = max;
    rep.greedy = greedy;
    rep.kids.push_back(std::move(node));
    node = std::move(rep);
    return Status::Ok();
  }

  // "{n}", "{n,}" or "{n,m}"; false (consuming nothing useful) when the text is not an interval.
  bool ParseInterval(uint32_t& min, uint32_t& max) {
    ++pos_;  // '{'
    auto number = [&](uint32_t& v) {
      size_t start = pos_;
      uint64_t value = 0;
      while (!AtEnd() && Peek() >= '0' && Peek() <= '9') {
        value = value * 10 + static_cast<uint64_t>(Peek() - '0');
        if (value > kMaxCountedRepeat) value = kMaxCountedRepeat + 1;
        ++pos_;
      }
      v = static_cast<uint32_t>(value);
      return pos_ > start;
    };
    if (!number(min)) return false;
    if (Consume("}")) {
      max = min;
    } else if (Consume(",")) {
      if (Consume("}")) {
        max = kUnbounded;
      } else if (!number(max) || !Consume("}")) {
        return false;
      }
    } else {
      return false;
    }
    return max >= min;
  }

  Status ParseAtom(bool& fold, size_t depth, RegexNode& out) {
    const char c = Peek();
    if (c == '(') return ParseGroup(fold, depth, out);
    if (c == '[') {
      out.kind = RegexNode::Kind::kAtom;
      return ParseClass(fold, out.atom);
    }
    if (c == '.') {
      ++pos_;
      out.kind = RegexNode::Kind::kAtom;
      out.atom = {SplitRegex::Atom::Kind::kAny, false, 0};
      return Status::Ok();
    }
    if (c == '^' || c == '$') return Unsupported("anchor '" + std::string(1, c) + "'");
    if (c == '*' || c == '+' || c == '?') return Error("quantifier without an operand");
    out.kind = RegexNode::Kind::kAtom;
    if (c == '\\') {
      ++pos_;
      SplitRegex::ClassItem item{};
      char32_t literal = 0;
      bool is_item = false;
      ES_RETURN_IF_ERROR(ParseEscape(literal, item, is_item));
      if (is_item) {
        SplitRegex::CharClass cls;
        cls.items.push_back(item);
        return AddClass(std::move(cls), fold, out.atom);
      }
      out.atom = MakeChar(literal, fold);
      return Status::Ok();
    }
    out.atom = MakeChar(NextCodePoint(), fold);
    return Status::Ok();
  }

  static SplitRegex::Atom MakeChar(char32_t c, bool fold) {
    if (fold) {
      const char32_t folded = unicode::SimpleCaseFold(c);
      // A character without case variants compares faster exactly.
      bool has_case = folded != c;
      if (!has_case) {
        for (char32_t probe : {static_cast<char32_t>(u_toupper(static_cast<UChar32>(c))),
                               static_cast<char32_t>(u_tolower(static_cast<UChar32>(c)))}) {
          if (probe != c) has_case = true;
        }
      }
      if (has_case) return {SplitRegex::Atom::Kind::kChar, true, folded};
    }
    return {SplitRegex::Atom::Kind::kChar, false, c};
  }

  Status ParseGroup(bool& fold, size_t depth, RegexNode& out) {
    ++pos_;  // '('
    bool inner_fold = fold;
    bool look = false, negate = false;
    if (Consume("?:")) {
      // non-capturing group, same flags
    } else if (Consume("?i:")) {
      inner_fold = true;
    } else if (Consume("?-i:")) {
      inner_fold = false;
    } else if (Consume("?=")) {
      look = true;
    } else if (Consume("?!")) {
      look = true;
      negate = true;
    } else if (!AtEnd() && Peek() == '?') {
      return Unsupported("group '(" + std::string(pattern_.substr(pos_, 3)) + "...'");
    }
    // A plain '(' captures in Oniguruma; captures are never read here, so it is an ordinary group.
    RegexNode body;
    ES_RETURN_IF_ERROR(ParseAlt(inner_fold, depth + 1, body));
    if (!Consume(")")) return Error("missing ')'");
    if (look) {
      out.kind = RegexNode::Kind::kLook;
      out.negate = negate;
      out.kids.push_back(std::move(body));
    } else {
      out = std::move(body);
    }
    return Status::Ok();
  }

  // After a backslash. Either a literal code point or a class item (\s, \d, \p{..} and their negations).
  Status ParseEscape(char32_t& literal, SplitRegex::ClassItem& item, bool& is_item) {
    if (AtEnd()) return Error("trailing backslash");
    const char c = Peek();
    ++pos_;
    is_item = false;
    switch (c) {
      case 't': literal = '\t'; return Status::Ok();
      case 'n': literal = '\n'; return Status::Ok();
      case 'r': literal = '\r'; return Status::Ok();
      case 'f': literal = '\f'; return Status::Ok();
      case 'v': literal = '\v'; return Status::Ok();
      case 'a': literal = '\a'; return Status::Ok();
      case 'e': literal = 0x1B; return Status::Ok();
      case 's':
      case 'S':
        is_item = true;
        item = {SplitRegex::ClassItem::Kind::kWhiteSpace, c == 'S', 0, 0, 0};
        return Status::Ok();
      case 'd':
      case 'D':
        is_item = true;
        item = {SplitRegex::ClassItem::Kind::kCategories, c == 'D', 0, 0, U_GC_ND_MASK};
        return Status::Ok();
      case 'p':
      case 'P': {
        if (!Consume("{")) return Unsupported("\\p without braces");
        bool negated = c == 'P';
        if (Consume("^")) negated = !negated;
        const size_t close = pattern_.find('}', pos_);
        if (close == std::string_view::npos) return Error("missing '}'");
        const std::string_view name = pattern_.substr(pos_, close - pos_);
        const uint32_t mask = unicode::GeneralCategoryMaskForName(name);
        if (mask == 0) return Unsupported("property \\p{" + std::string(name) + "}");
        pos_ = close + 1;
        is_item = true;
        item = {SplitRegex::ClassItem::Kind::kCategories, negated, 0, 0, mask};
        return Status::Ok();
      }
      case 'x': return ParseHex(literal);
      case 'u': return ParseFixedHex(4, literal);
      default: break;
    }
    const auto uc = static_cast<unsigned char>(c);
    if (uc >= unicode::kAsciiLimit || !(std::isalnum(uc))) {
      --pos_;
      literal = NextCodePoint();  // an escaped symbol stands for itself
      return Status::Ok();
    }
    return Unsupported(std::string("escape '\\") + c + "'");
  }

  Status ParseHex(char32_t& literal) {
    if (Consume("{")) {
      const size_t close = pattern_.find('}', pos_);
      if (close == std::string_view::npos || close == pos_) return Error("bad \\x{...}");
      ES_RETURN_IF_ERROR(HexValue(pattern_.substr(pos_, close - pos_), literal));
      pos_ = close + 1;
      return Status::Ok();
    }
    return ParseFixedHex(2, literal);
  }

  Status ParseFixedHex(size_t digits, char32_t& literal) {
    if (pos_ + digits > pattern_.size()) return Error("bad hex escape");
    ES_RETURN_IF_ERROR(HexValue(pattern_.substr(pos_, digits), literal));
    pos_ += digits;
    return Status::Ok();
  }

  Status HexValue(std::string_view digits, char32_t& value) const {
    uint64_t v = 0;
    for (char d : digits) {
      int nibble;
      if (d >= '0' && d <= '9') nibble = d - '0';
      else if (d >= 'a' && d <= 'f') nibble = d - 'a' + 10;
      else if (d >= 'A' && d <= 'F') nibble = d - 'A' + 10;
      else return Error("bad hex digit");
      v = v * 16 + static_cast<uint64_t>(nibble);
      if (v > unicode::kMaxCodePoint) return Error("code point out of range");
    }
    value = static_cast<char32_t>(v);
    return Status::Ok();
  }

  Status ParseClass(bool fold, SplitRegex::Atom& atom) {
    ++pos_;  // '['
    SplitRegex::CharClass cls;
    if (Consume("^")) cls.negated = true;
    if (!AtEnd() && Peek() == ']') return Unsupported("']' first in a class");
    while (true) {
      if (AtEnd()) return Error("missing ']'");
      if (Consume("]")) break;
      if (Peek() == '[') return Unsupported("nested or POSIX class");
      if (Consume("&&")) return Unsupported("class intersection");
      SplitRegex::ClassItem item{};
      char32_t lo = 0;
      bool is_item = false;
      ES_RETURN_IF_ERROR(ParseClassChar(lo, item, is_item));
      if (is_item) {
        cls.items.push_back(item);
        continue;
      }
      char32_t hi = lo;
      if (pos_ + 1 < pattern_.size() && Peek() == '-' && pattern_[pos_ + 1] != ']') {
        ++pos_;
        bool hi_is_item = false;
        ES_RETURN_IF_ERROR(ParseClassChar(hi, item, hi_is_item));
        if (hi_is_item) return Error("class item as a range end");
        if (hi < lo) return Error("inverted range");
      }
      cls.items.push_back({SplitRegex::ClassItem::Kind::kRange, false, lo, hi, 0});
    }
    return AddClass(std::move(cls), fold, atom);
  }

  Status ParseClassChar(char32_t& c, SplitRegex::ClassItem& item, bool& is_item) {
    is_item = false;
    if (Peek() == '\\') {
      ++pos_;
      return ParseEscape(c, item, is_item);
    }
    c = NextCodePoint();
    return Status::Ok();
  }

  Status AddClass(SplitRegex::CharClass cls, bool fold, SplitRegex::Atom& atom) {
    if (fold) {
      for (const auto& item : cls.items) {
        const bool closed = item.kind == SplitRegex::ClassItem::Kind::kWhiteSpace ||
                            (item.kind == SplitRegex::ClassItem::Kind::kCategories &&
                             IsCaseClosedMask(item.categories));
        if (!closed) return Unsupported("a case-sensitive class under (?i)");
      }
    }
    for (char32_t c = 0; c < unicode::kAsciiLimit; ++c) {
      if (cls.ContainsSlow(c)) cls.ascii[c >> 6] |= uint64_t{1} << (c & 63);
    }
    atom = {SplitRegex::Atom::Kind::kClass, false, static_cast<uint32_t>(out_.classes_.size())};
    out_.classes_.push_back(std::move(cls));
    return Status::Ok();
  }

  static size_t MinLength(const RegexNode& n) {
    switch (n.kind) {
      case RegexNode::Kind::kEmpty:
      case RegexNode::Kind::kLook: return 0;
      case RegexNode::Kind::kAtom: return 1;
      case RegexNode::Kind::kConcat: {
        size_t sum = 0;
        for (const auto& k : n.kids) sum += MinLength(k);
        return sum;
      }
      case RegexNode::Kind::kAlt: {
        size_t best = std::numeric_limits<size_t>::max();
        for (const auto& k : n.kids) best = std::min(best, MinLength(k));
        return best;
      }
      case RegexNode::Kind::kRepeat: return n.min == 0 ? 0 : MinLength(n.kids[0]);
    }
    return 0;
  }

  uint32_t Here() const { return static_cast<uint32_t>(out_.program_.size()); }
  uint32_t Push(const SplitRegex::Inst& inst) {
    out_.program_.push_back(inst);
    return Here() - 1;
  }

  Status Emit(const RegexNode& n) {
    if (out_.program_.size() > kMaxProgramSize) return Error("pattern too large");
    using Op = SplitRegex::Op;
    switch (n.kind) {
      case RegexNode::Kind::kEmpty: return Status::Ok();
      case RegexNode::Kind::kAtom: {
        SplitRegex::Inst inst;
        inst.op = Op::kAtom;
        inst.atom = n.atom;
        Push(inst);
        return Status::Ok();
      }
      case RegexNode::Kind::kConcat:
        for (const auto& k : n.kids) ES_RETURN_IF_ERROR(Emit(k));
        return Status::Ok();
      case RegexNode::Kind::kAlt: {
        std::vector<uint32_t> jumps;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          const bool last = i + 1 == n.kids.size();
          uint32_t split = 0;
          if (!last) {
            SplitRegex::Inst inst;
            inst.op = Op::kSplit;
            split = Push(inst);
            out_.program_[split].x = Here();
          }
          ES_RETURN_IF_ERROR(Emit(n.kids[i]));
          if (!last) {
            SplitRegex::Inst jmp;
            jmp.op = Op::kJmp;
            jumps.push_back(Push(jmp));
            out_.program_[split].y = Here();
          }
        }
        for (uint32_t j : jumps) out_.program_[j].x = Here();
        return Status::Ok();
      }
      case RegexNode::Kind::kLook: {
        SplitRegex::Inst inst;
        inst.op = Op::kLook;
        inst.negate = n.negate;
        const uint32_t look = Push(inst);
        out_.program_[look].x = Here();
        ES_RETURN_IF_ERROR(Emit(n.kids[0]));
        SplitRegex::Inst match;
        match.op = Op::kMatch;
        Push(match);
        out_.program_[look].y = Here();
        return Status::Ok();
      }
      case RegexNode::Kind::kRepeat: return EmitRepeat(n);
    }
    return Status::Ok();
  }

  Status EmitRepeat(const RegexNode& n) {
    using Op = SplitRegex::Op;
    const RegexNode& body = n.kids[0];
    if (n.min > kMaxCountedRepeat || (n.max != kUnbounded && n.max > kMaxCountedRepeat)) {
      return Unsupported("a repeat count above 1000");
    }
    if (body.kind == RegexNode::Kind::kAtom) {
      SplitRegex::Inst inst;
      inst.op = Op::kRepeat;
      inst.atom = body.atom;
      inst.min = n.min;
      inst.max = n.max;
      inst.greedy = n.greedy;
      Push(inst);
      return Status::Ok();
    }
    if (n.max == kUnbounded && MinLength(body) == 0) {
      return Unsupported("an unbounded repeat of something that can match empty");
    }
    for (uint32_t i = 0; i < n.min; ++i) ES_RETURN_IF_ERROR(Emit(body));
    if (n.max == kUnbounded) {
      SplitRegex::Inst inst;
      inst.op = Op::kSplit;
      const uint32_t loop = Push(inst);
      const uint32_t body_pc = Here();
      ES_RETURN_IF_ERROR(Emit(body));
      SplitRegex::Inst jmp;
      jmp.op = Op::kJmp;
      jmp.x = loop;
      Push(jmp);
      const uint32_t exit = Here();
      out_.program_[loop].x = n.greedy ? body_pc : exit;
      out_.program_[loop].y = n.greedy ? exit : body_pc;
      return Status::Ok();
    }
    // min..max: each optional copy may be skipped, and skipping one skips the rest.
    std::vector<uint32_t> splits;
    for (uint32_t i = n.min; i < n.max; ++i) {
      SplitRegex::Inst inst;
      inst.op = Op::kSplit;
      splits.push_back(Push(inst));
      out_.program_[splits.back()].x = Here();  // provisional: body
      ES_RETURN_IF_ERROR(Emit(body));
    }
    const uint32_t exit = Here();
    for (uint32_t s : splits) {
      const uint32_t body_pc = out_.program_[s].x;
      out_.program_[s].x = n.greedy ? body_pc : exit;
      out_.program_[s].y = n.greedy ? exit : body_pc;
    }
    return Status::Ok();
  }

  std::string_view pattern_;
  size_t pos_ = 0;
  SplitRegex& out_;
};

Result<SplitRegex> SplitRegex::Compile(std::string_view pattern, bool specialize) {
  SplitRegex regex;
  regex.pattern_ = std::string(pattern);
  RegexCompiler compiler(pattern, regex);
  ES_RETURN_IF_ERROR(compiler.Compile());
  if (specialize) {
    if (pattern == kQwenFamilyPattern) regex.qwen_family_digits_ = 1;
    if (pattern == kLlama3FamilyPattern) regex.qwen_family_digits_ = kLlama3DigitRun;
  }
  return regex;
}

SplitRegex SplitRegex::Literal(std::string_view literal) {
  SplitRegex regex;
  regex.pattern_ = std::string(literal);
  size_t pos = 0;
  while (pos < literal.size()) {
    Inst inst;
    inst.op = Op::kAtom;
    inst.atom = {Atom::Kind::kChar, false, static_cast<uint32_t>(unicode::DecodeNext(literal, pos))};
    regex.program_.push_back(inst);
  }
  Inst match;
  match.op = Op::kMatch;
  regex.program_.push_back(match);
  return regex;
}

bool SplitRegex::AtomMatches(const Atom& atom, char32_t c) const {
  switch (atom.kind) {
    case Atom::Kind::kChar: return atom.fold ? unicode::SimpleCaseFold(c) == atom.value : c == atom.value;
    case Atom::Kind::kClass: return classes_[atom.value].Contains(c);
    case Atom::Kind::kAny: return c != '\n';
  }
  return false;
}

template <bool kMemo>
size_t SplitRegex::Run(uint32_t start_pc, std::string_view text, size_t pos, MatchScratch& scratch,
                       uint64_t max_steps) const {
  auto& stack = scratch.stack;
  const size_t base = stack.size();
  const size_t end = text.size();
  uint32_t pc = start_pc;
  while (true) {
    if (++scratch.steps > max_steps) {
      stack.resize(base);
      return kBudgetExceeded;
    }
    const Inst& inst = program_[pc];
    bool ok = true;
    if (kMemo && pos - scratch.memo_base < scratch.memo_span) {
      // Without backreferences what follows a state depends on the state alone: one already explored (in
      // this attempt or an earlier failed one) cannot lead to a match now either.
      uint32_t& stamp = scratch.memo[(pos - scratch.memo_base) * scratch.memo_stride + pc];
      if (stamp == scratch.memo_generation) {
        ok = false;
        goto backtrack;
      }
      stamp = scratch.memo_generation;
    }
    switch (inst.op) {
      case Op::kAtom: {
        if (pos >= end) {
          ok = false;
          break;
        }
        size_t next = pos;
        const char32_t c = unicode::DecodeNext(text, next);
        if (AtomMatches(inst.atom, c)) {
          pos = next;
          ++pc;
        } else {
          ok = false;
        }
        break;
      }
      case Op::kRepeat: {
        if (inst.greedy) {
          size_t p = pos;
          size_t min_pos = pos;
          uint32_t count = 0;
          while (count < inst.max && p < end) {
            size_t next = p;
            const char32_t c = unicode::DecodeNext(text, next);
            if (!AtomMatches(inst.atom, c)) break;
            p = next;
            ++count;
            if (count == inst.min) min_pos = p;
          }
          if (count < inst.min) {
            ok = false;
            break;
          }
          if (p > min_pos) stack.push_back({pc + 1, kFrameGreedy, p, min_pos});
          pos = p;
          ++pc;
        } else {
          uint32_t count = 0;
          while (count < inst.min && pos < end) {
            size_t next = pos;
            const char32_t c = unicode::DecodeNext(text, next);
            if (!AtomMatches(inst.atom, c)) break;
            pos = next;
            ++count;
          }
          if (count < inst.min) {
            ok = false;
            break;
          }
          if (count < inst.max) stack.push_back({pc, kFrameLazy, pos, count});
          ++pc;
        }
        break;
      }
      case Op::kSplit:
        if (inst.filter != kNoFilter) {
          const FirstSet& first = first_sets_[inst.filter];
          bool possible = false;
          if (pos < end) {
            const auto b = static_cast<unsigned char>(text[pos]);
            possible = b < unicode::kAsciiLimit ? ((first.ascii[b >> 6] >> (b & 63)) & 1) != 0 : first.non_ascii;
          }
          if (!possible) {
            pc = inst.y;
            break;
          }
        }
        stack.push_back({inst.y, kFrameBranch, pos, 0});
        pc = inst.x;
        break;
      case Op::kJmp: pc = inst.x; break;
      case Op::kLook: {
        const size_t look = Run<false>(inst.x, text, pos, scratch, max_steps);
        if (look == kBudgetExceeded) {
          stack.resize(base);
          return kBudgetExceeded;
        }
        const bool matched = look != kNoMatch;
        if (matched != inst.negate) {
          pc = inst.y;
        } else {
          ok = false;
        }
        break;
      }
      case Op::kMatch: stack.resize(base); return pos;
    }
    if (ok) continue;
  backtrack:
    // Backtrack to the most recent choice point that still has an alternative.
    bool resumed = false;
    while (!resumed && stack.size() > base) {
      MatchScratch::Frame frame = stack.back();
      stack.pop_back();
      switch (frame.kind) {
        case kFrameBranch:
          pc = frame.pc;
          pos = frame.pos;
          resumed = true;
          break;
        case kFrameGreedy: {
          size_t shorter = unicode::PrevBoundary(text, frame.pos);
          if (kMemo) {
            // Give back characters past continuations already explored (an earlier, overlapping run of the
            // same repeat went through them), at a fraction of a step each: they cost a load, not a search.
            uint32_t skipped = 0;
            while (shorter > frame.aux && shorter - scratch.memo_base < scratch.memo_span &&
                   scratch.memo[(shorter - scratch.memo_base) * scratch.memo_stride + frame.pc] ==
                       scratch.memo_generation) {
              shorter = unicode::PrevBoundary(text, shorter);
              if (++skipped % kSkipsPerStep == 0 && ++scratch.steps > max_steps) {
                stack.resize(base);
                return kBudgetExceeded;
              }
            }
          }
          if (shorter > frame.aux) stack.push_back({frame.pc, kFrameGreedy, shorter, frame.aux});
          pc = frame.pc;
          pos = shorter;
          resumed = true;
          break;
        }
        case kFrameLazy: {
          const Inst& rep = program_[frame.pc];
          if (frame.pos >= end) break;
          size_t next = frame.pos;
          const char32_t c = unicode::DecodeNext(text, next);
          if (!AtomMatches(rep.atom, c)) break;
          const size_t count = frame.aux + 1;
          if (count < rep.max) stack.push_back({frame.pc, kFrameLazy, next, count});
          pc = frame.pc + 1;
          pos = next;
          resumed = true;
          break;
        }
      }
    }
    if (!resumed) return kNoMatch;
  }
}

// The Qwen-family pattern, alternative by alternative, with the backtracking each one would do worked out
// by hand. Returns the end of the match; the pattern matches at every position of a non-empty text.
size_t SplitRegex::MatchQwenFamily(std::string_view text, size_t pos) const {
  const size_t n = text.size();
  size_t next = pos;
  const char32_t c = unicode::DecodeNext(text, next);
  const uint8_t kind = CharKind(c);
  auto kind_at = [&](size_t p, size_t& after) {
    after = p;
    return CharKind(unicode::DecodeNext(text, after));
  };
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c == '\'' && next < n) {
    size_t p = next;
    const char32_t c1 = FoldForContraction(unicode::DecodeNext(text, p));
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return p;
    if ((c1 == 'r' || c1 == 'v' || c1 == 'l') && p < n) {
      size_t q = p;
      const char32_t c2 = FoldForContraction(unicode::DecodeNext(text, q));
      if ((c1 == 'l' && c2 == 'l') || (c1 != 'l' && c2 == 'e')) return q;
    }
  }
  auto skip_letters = [&](size_t p) {
    size_t after;
    while (p < n && (kind_at(p, after) & kKindLetter)) p = after;
    return p;
  };
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (kind & kKindLetter) return skip_letters(next);
  size_t after;
  if (!(kind & (kKindNewline | kKindNumber)) && next < n && (kind_at(next, after) & kKindLetter)) {
    return skip_letters(after);
  }
  // \p{N} or \p{N}{1,3}
  if (kind & kKindNumber) {
    size_t p = next;
    for (uint32_t count = 1; count < qwen_family_digits_ && p < n && (kind_at(p, after) & kKindNumber); ++count) {
      p = after;
    }
    return p;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t other_start = kNoMatch;
  if (IsOther(kind)) other_start = next;
  else if (c == ' ' && next < n && IsOther(kind_at(next, after))) other_start = after;
  if (other_start != kNoMatch) {
    size_t p = other_start;
    while (p < n && IsOther(kind_at(p, after))) p = after;
    while (p < n && (text[p] == '\r' || text[p] == '\n')) ++p;
    return p;
  }
  // Only white space is left: \s*[\r\n]+ takes the run up to its last line break; else \s+(?!\S) leaves
  // the run's last character to the word after it; else \s+.
  size_t run_end = next;
  size_t last_newline = (kind & kKindNewline) ? pos : kNoMatch;
  while (run_end < n) {
    const uint8_t k = kind_at(run_end, after);
    if (!(k & kKindSpace)) break;
    if (k & kKindNewline) last_newline = run_end;
    run_end = after;
  }
  if (last_newline != kNoMatch) return last_newline + 1;
  if (run_end == n) return run_end;
  const size_t shorter = unicode::PrevBoundary(text, run_end);
  return shorter > pos ? shorter : run_end;
}

size_t SplitRegex::MatchAt(std::string_view text, size_t pos, MatchScratch& scratch) const {
  if (qwen_family_digits_ != 0) return pos < text.size() ? MatchQwenFamily(text, pos) - pos : kNoMatch;
  scratch.steps = 0;
  const size_t end = Run<false>(0, text, pos, scratch, kMaxStepsPerMatch);
  return end == kNoMatch || end == kBudgetExceeded ? end : end - pos;
}

void SplitRegex::ResetMemo(MatchScratch& scratch, size_t base, size_t text_size) const {
  scratch.memo_stride = program_.size();
  scratch.memo_base = base;
  scratch.memo_span = std::min(text_size - base + 1, std::max<size_t>(1, kMemoStates / program_.size()));
  const size_t states = scratch.memo_span * scratch.memo_stride;
  if (scratch.memo.size() < states) scratch.memo.resize(states, 0);
  if (++scratch.memo_generation == 0) {  // wrapped: old stamps could collide with new generations
    std::fill(scratch.memo.begin(), scratch.memo.end(), 0);
    scratch.memo_generation = 1;
  }
}

Status SplitRegex::FindAll(std::string_view text, MatchScratch& scratch,
                           std::vector<std::pair<size_t, size_t>>& out) const {
  const size_t n = text.size();
  const bool generic = qwen_family_digits_ == 0;
  if (generic) {
    ResetMemo(scratch, 0, n);
    scratch.failed_steps = 0;
    scratch.memo_dirty = false;
  }
  size_t last_end = 0;
  bool have_last_match = false;
  size_t last_match_end = 0;
  while (last_end <= n) {
    size_t start = last_end;
    size_t length = kNoMatch;
    while (true) {
      if (generic) {
        // Failed attempts leave their states for the next ones; the window moves on once half is behind.
        // An attempt runs plainly while the work since the last match is small (the ordinary patterns need a
        // few steps a character), else, or once it grows, with the memo.
        size_t match_end = kBudgetExceeded;
        scratch.steps = 0;
        if (scratch.failed_steps < kMemoAfterSteps) {
          match_end = Run<false>(0, text, start, scratch, kMemoAfterSteps - scratch.failed_steps);
        }
        if (match_end == kBudgetExceeded) {
          if (start - scratch.memo_base >= (scratch.memo_span + 1) / 2) ResetMemo(scratch, start, n);
          scratch.failed_steps = std::max(scratch.failed_steps + scratch.steps, kMemoAfterSteps);
          scratch.steps = 0;
          scratch.memo_dirty = true;
          match_end = Run<true>(0, text, start, scratch, kMaxStepsPerMatch);
        }
        length = match_end == kNoMatch || match_end == kBudgetExceeded ? match_end : match_end - start;
        if (length == kNoMatch) {
          scratch.failed_steps += scratch.steps;
        } else if (length != kBudgetExceeded) {
          scratch.failed_steps = 0;
          if (scratch.memo_dirty) {  // states on the path of a match were not failures
            ResetMemo(scratch, start + length, n);
            scratch.memo_dirty = false;
          }
        }
      } else {
        length = MatchAt(text, start, scratch);
      }
      if (length == kBudgetExceeded) {
        return Status::ResourceExhausted("split regex '" + pattern_ + "' backtracked too much on the input");
      }
      if (length != kNoMatch || start >= n) break;
      start += unicode::SequenceLength(static_cast<unsigned char>(text[start]));
    }
    if (length == kNoMatch) break;
    if (length == 0 && have_last_match && last_match_end == start) {
      // onig's find_iter refuses an empty match where the previous one ended and steps one character.
      if (start >= n) break;
      last_end = start + unicode::SequenceLength(static_cast<unsigned char>(text[start]));
      continue;
    }
    out.emplace_back(start, start + length);
    last_end = start + length;
    have_last_match = true;
    last_match_end = last_end;
  }
  return Status::Ok();
}

}  // namespace es
