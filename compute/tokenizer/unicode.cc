// UTF-8 handling by hand (it is hot and simple) and every Unicode property, normalization and case mapping
// through ICU, so that the tokenizer's classes follow the Unicode data ICU ships.
#include "compute/tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>


namespace es::unicode {
namespace {

bool InRange(unsigned char b, unsigned char lo, unsigned char hi) { return b >= lo && b <= hi; }

constexpr char kReplacementUtf8[] = "\xEF\xBF\xBD";

const icu::Normalizer2* NormalizerFor(NormalForm form, UErrorCode& error) {
  switch (form) {
    case NormalForm::kNfc: return icu::Normalizer2::getNFCInstance(error);
    case NormalForm::kNfd: return icu::Normalizer2::getNFDInstance(error);
    case NormalForm::kNfkc: return icu::Normalizer2::getNFKCInstance(error);
    case NormalForm::kNfkd: return icu::Normalizer2::getNFKDInstance(error);
  }
  return nullptr;
}

bool IsAscii(std::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= kAsciiLimit) return false;
  }
  return true;
}

}  // namespace

void AppendUtf8(char32_t c, std::string& out) {
  char buf[U8_MAX_LENGTH];
  size_t len = 0;
  UBool error = false;
  U8_APPEND(reinterpret_cast<uint8_t*>(buf), len, U8_MAX_LENGTH, static_cast<UChar32>(c), error);
  if (error) {
    out.append(kReplacementUtf8);
    return;
  }
  out.append(buf, len);
}

size_t AppendUtf8Lossy(std::string_view bytes, bool final, std::string& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  size_t run_start = 0;  // start of the pending run of valid bytes, appended in one go
  while (i < n) {
    if (p[i] < kAsciiLimit) {
      i = SkipAsciiWords(p, i + 1, n);  // the rest of the ASCII run
      continue;
    }
    unsigned char lo, hi;
    const size_t len = Utf8Lead(p[i], lo, hi);
    if (len == 0) {
      out.append(bytes.data() + run_start, i - run_start);
      out.append(kReplacementUtf8);
      run_start = ++i;
      continue;
    }
    // Count how many bytes of this sequence are present and well-formed.
    size_t good = 1;
    while (good < len && i + good < n) {
      const unsigned char b = p[i + good];
      const bool ok = good == 1 ? InRange(b, lo, hi) : InRange(b, 0x80, 0xBF);
      if (!ok) break;
      ++good;
    }
    if (good == len) {
      i += len;
      continue;
    }
    if (i + good == n && !final) break;  // truncated, may still complete
    out.append(bytes.data() + run_start, i - run_start);
    out.append(kReplacementUtf8);
    i += good;
    run_start = i;
  }
  out.append(bytes.data() + run_start, i - run_start);
  return i;
}

uint32_t GeneralCategoryMask(char32_t c) { return U_GET_GC_MASK(static_cast<UChar32>(c)); }

bool IsLetter(char32_t c) { return (GeneralCategoryMask(c) & U_GC_L_MASK) != 0; }

bool IsNumber(char32_t c) { return (GeneralCategoryMask(c) & U_GC_N_MASK) != 0; }

bool IsDecimalDigit(char32_t c) { return (GeneralCategoryMask(c) & U_GC_ND_MASK) != 0; }

bool IsWhiteSpace(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

bool IsWordChar(char32_t c) {
  const auto ch = static_cast<UChar32>(c);
  constexpr uint32_t kWordCategories = U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK;
  return u_hasBinaryProperty(ch, UCHAR_ALPHABETIC) || (GeneralCategoryMask(c) & kWordCategories) != 0 ||
         u_hasBinaryProperty(ch, UCHAR_JOIN_CONTROL);
}

char32_t SimpleCaseFold(char32_t c) {
  return static_cast<char32_t>(u_foldCase(static_cast<UChar32>(c), U_FOLD_CASE_DEFAULT));
}

uint32_t GeneralCategoryMaskForName(std::string_view name) {
  // One-letter names are the major classes; two-letter names one category. ICU's property-name lookup also
  // accepts long names ("Letter"), which Oniguruma does too.
  const std::string key(name);
  const int32_t value = u_getPropertyValueEnum(UCHAR_GENERAL_CATEGORY_MASK, key.c_str());
  if (value == UCHAR_INVALID_CODE) return 0;
  return static_cast<uint32_t>(value);
}

Status Normalize(NormalForm form, std::string_view in, std::string& out) {
  out.clear();
  // ASCII is invariant under all four forms, and most text is mostly ASCII.
  if (IsAscii(in)) {
    out.assign(in);
    return Status::Ok();
  }
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = NormalizerFor(form, error);
  if (U_FAILURE(error) || normalizer == nullptr) {
    return Status::NotSupported(std::string("ICU normalizer unavailable: ") + u_errorName(error));
  }
  const icu::StringPiece piece(in.data(), static_cast<int32_t>(in.size()));
  if (normalizer->isNormalizedUTF8(piece, error) && U_SUCCESS(error)) {
    out.assign(in);
    return Status::Ok();
  }
  error = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(in.size()));
  normalizer->normalizeUTF8(0, piece, sink, nullptr, error);
  if (U_FAILURE(error)) return Status::InvalidArgument(std::string("normalization failed: ") + u_errorName(error));
  return Status::Ok();
}

Status Lowercase(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  size_t pos = 0;
  while (pos < in.size()) {
    const unsigned char b = static_cast<unsigned char>(in[pos]);
    if (b < kAsciiLimit) {
      out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b - 'A' + 'a' : b));
      ++pos;
      continue;
    }
    // One character at a time, so that no context-dependent mapping (final sigma) applies.
    const size_t start = pos;
    DecodeNext(in, pos);
    UErrorCode error = U_ZERO_ERROR;
    icu::StringByteSink<std::string> sink(&out);
    icu::CaseMap::utf8ToLower("", 0, icu::StringPiece(in.data() + start, static_cast<int32_t>(pos - start)), sink,
                              nullptr, error);
    if (U_FAILURE(error)) return Status::InvalidArgument(std::string("lowercase failed: ") + u_errorName(error));
  }
  return Status::Ok();
}

}  // namespace es::unicode
