#include "inflab/wordpiece.hpp"

#include <fmt/format.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <fstream>

#include "inflab/error.hpp"

namespace inflab {

namespace {

bool is_whitespace(UChar32 c) {
  return c == '\t' || c == '\n' || c == '\r' || u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
}

bool is_control(UChar32 c) {  // Unicode "Other" (C*), except the whitespace controls
  if (c == '\t' || c == '\n' || c == '\r') return false;
  switch (u_charType(c)) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
      return true;
    default:
      return false;
  }
}

bool is_punctuation(UChar32 c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126))
    return true;
  return u_ispunct(c) != 0;
}

bool is_chinese(UChar32 c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::string utf8(const icu::UnicodeString& s) {
  std::string out;
  s.toUTF8String(out);
  return out;
}

std::size_t code_points(const std::string& text) {
  return static_cast<std::size_t>(icu::UnicodeString::fromUTF8(text).countChar32());
}

}  // namespace

WordPieceTokenizer::WordPieceTokenizer(const std::filesystem::path& vocab_file, bool lowercase)
    : lowercase_(lowercase) {
  std::ifstream in(vocab_file);
  if (!in) throw Error(fmt::format("{}: cannot read the WordPiece vocabulary", vocab_file.string()));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab_.emplace(line, static_cast<std::int64_t>(pieces_.size()));
    pieces_.push_back(line);
  }
  for (auto [token, target] :
       {std::pair{"[UNK]", &unk_}, {"[CLS]", &cls_}, {"[SEP]", &sep_}, {"[PAD]", &pad_}}) {
    auto it = vocab_.find(token);
    if (it == vocab_.end())
      throw Error(fmt::format("{}: the vocabulary has no {} token ({} lines read)", vocab_file.string(),
                              token, pieces_.size()));
    *target = it->second;
  }
}

std::string WordPieceTokenizer::normalize(const std::string& text) const {
  icu::UnicodeString input = icu::UnicodeString::fromUTF8(text), cleaned;
  for (int32_t i = 0; i < input.length(); i = input.moveIndex32(i, 1)) {
    UChar32 c = input.char32At(i);
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_whitespace(c)) {
      cleaned.append(static_cast<UChar32>(' '));
    } else if (is_chinese(c)) {
      cleaned.append(static_cast<UChar32>(' ')).append(c).append(static_cast<UChar32>(' '));
    } else {
      cleaned.append(c);
    }
  }
  if (!lowercase_) return utf8(cleaned);
  // Uncased BERT strips accents (NFD, then drop non-spacing marks) and then lower-cases.
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(status);
  if (U_FAILURE(status)) throw Error("ICU: NFD normalizer unavailable");
  icu::UnicodeString decomposed = nfd->normalize(cleaned, status), lowered;
  if (U_FAILURE(status)) throw Error("ICU: NFD normalization failed");
  for (int32_t i = 0; i < decomposed.length(); i = decomposed.moveIndex32(i, 1)) {
    UChar32 c = decomposed.char32At(i);
    if (u_charType(c) == U_NON_SPACING_MARK) continue;
    // Character by character (full mapping, no context), as the reference tokenizer does:
    // a word-final capital sigma becomes σ, not ς.
    icu::UnicodeString one(c);
    lowered.append(one.toLower(icu::Locale::getRoot()));
  }
  return utf8(lowered);
}

std::vector<std::string> WordPieceTokenizer::pre_tokenize(const std::string& text) const {
  icu::UnicodeString input = icu::UnicodeString::fromUTF8(text), word;
  std::vector<std::string> words;
  auto flush = [&]() {
    if (!word.isEmpty()) words.push_back(utf8(word)), word.remove();
  };
  for (int32_t i = 0; i < input.length(); i = input.moveIndex32(i, 1)) {
    UChar32 c = input.char32At(i);
    if (is_whitespace(c)) {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      words.push_back(utf8(icu::UnicodeString(c)));
    } else {
      word.append(c);
    }
  }
  flush();
  return words;
}

std::vector<std::string> WordPieceTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> pieces;
  for (const auto& word : pre_tokenize(normalize(text))) {
    if (code_points(word) > 100) {
      pieces.push_back("[UNK]");
      continue;
    }
    icu::UnicodeString chars = icu::UnicodeString::fromUTF8(word);
    std::vector<std::string> word_pieces;
    int32_t start = 0;
    bool unknown = false;
    while (start < chars.length()) {
      // Greedy longest match: shrink the end one code point at a time.
      int32_t end = chars.length();
      std::string found;
      while (end > start) {
        std::string candidate = utf8(chars.tempSubStringBetween(start, end));
        if (start > 0) candidate = "##" + candidate;
        if (vocab_.count(candidate)) {
          found = candidate;
          break;
        }
        end = chars.moveIndex32(end, -1);
      }
      if (found.empty()) {
        unknown = true;
        break;
      }
      word_pieces.push_back(found);
      start = end;
    }
    if (unknown)
      pieces.push_back("[UNK]");
    else
      pieces.insert(pieces.end(), word_pieces.begin(), word_pieces.end());
  }
  return pieces;
}

std::int64_t WordPieceTokenizer::id(const std::string& piece) const {
  auto it = vocab_.find(piece);
  return it == vocab_.end() ? unk_ : it->second;
}

Encoding WordPieceTokenizer::encode(const std::string& a, const std::string* b, std::size_t max_length,
                                    bool pad) const {
  std::vector<std::int64_t> first, second;
  for (const auto& p : tokenize(a)) first.push_back(id(p));
  if (b)
    for (const auto& p : tokenize(*b)) second.push_back(id(p));
  const std::size_t special = b ? 3 : 2;
  if (max_length < special)
    throw Error(fmt::format("max_length {} leaves no room for the special tokens", max_length));
  // Longest first: drop from the end of the longer sequence until everything fits.
  while (first.size() + second.size() + special > max_length) {
    if (first.size() >= second.size())
      first.pop_back();
    else
      second.pop_back();
  }
  Encoding e;
  e.input_ids.push_back(cls_);
  e.input_ids.insert(e.input_ids.end(), first.begin(), first.end());
  e.input_ids.push_back(sep_);
  e.token_type_ids.assign(e.input_ids.size(), 0);
  if (b) {
    e.input_ids.insert(e.input_ids.end(), second.begin(), second.end());
    e.input_ids.push_back(sep_);
    e.token_type_ids.resize(e.input_ids.size(), 1);
  }
  e.attention_mask.assign(e.input_ids.size(), 1);
  if (pad)
    while (e.input_ids.size() < max_length)
      e.input_ids.push_back(pad_), e.token_type_ids.push_back(0), e.attention_mask.push_back(0);
  return e;
}

}  // namespace inflab
