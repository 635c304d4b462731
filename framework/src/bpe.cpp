// Byte-level BPE (inflab/bpe.hpp).
#include "inflab/bpe.hpp"

#include <fmt/format.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "inflab/error.hpp"
#include "inflab/gguf.hpp"

namespace inflab {

namespace {

bool is_letter(UChar32 c) { return (U_GET_GC_MASK(c) & U_GC_L_MASK) != 0; }
bool is_number(UChar32 c) { return (U_GET_GC_MASK(c) & U_GC_N_MASK) != 0; }
bool is_space(UChar32 c) { return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE) != 0; }

std::string to_utf8(UChar32 c) {
  char buffer[4];
  std::int32_t length = 0;
  UBool error = false;
  U8_APPEND(buffer, length, 4, c, error);
  return std::string(buffer, static_cast<std::size_t>(length));
}

std::vector<UChar32> code_points(const std::string& text) {
  std::vector<UChar32> out;
  const auto* s = reinterpret_cast<const std::uint8_t*>(text.data());
  const auto length = static_cast<std::int32_t>(text.size());
  for (std::int32_t i = 0; i < length;) {
    const std::int32_t start = i;
    UChar32 c;
    U8_NEXT(s, i, length, c);
    if (c < 0) throw Error(fmt::format("tokenizer: invalid UTF-8 at byte {} of the text", start));
    out.push_back(c);
  }
  return out;
}

// GPT-2's pattern over code points [begin, end): the pieces, as [start, stop) index pairs.
void gpt2_split(const std::vector<UChar32>& cp, std::size_t begin, std::size_t end,
                std::vector<std::pair<std::size_t, std::size_t>>& out) {
  auto at = [&](std::size_t i) -> UChar32 { return i < end ? cp[i] : -1; };
  std::size_t i = begin;
  while (i < end) {
    const UChar32 c = cp[i];
    // 's|'t|'re|'ve|'m|'ll|'d
    if (c == '\'') {
      const UChar32 a = at(i + 1), b = at(i + 2);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        out.push_back({i, i + 2}), i += 2;
        continue;
      }
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        out.push_back({i, i + 3}), i += 3;
        continue;
      }
    }
    // ' ?X+' for X = letters, numbers, and neither-space-letter-nor-number.
    const std::size_t body = (c == ' ' && i + 1 < end) ? i + 1 : i;
    const UChar32 first = at(body);
    auto run = [&](auto&& in_class) {
      std::size_t j = body;
      while (j < end && in_class(cp[j])) ++j;
      out.push_back({i, j});
      i = j;
    };
    if (first >= 0 && is_letter(first)) {
      run(is_letter);
      continue;
    }
    if (first >= 0 && is_number(first)) {
      run(is_number);
      continue;
    }
    if (first >= 0 && !is_space(first) && !is_letter(first) && !is_number(first)) {
      run([](UChar32 x) { return !is_space(x) && !is_letter(x) && !is_number(x); });
      continue;
    }
    // \s+(?!\S): a run of whitespace, less its last character when a non-space follows it;
    // \s+: a lone whitespace character before a non-space.
    std::size_t j = i;
    while (j < end && is_space(cp[j])) ++j;
    if (j > i + 1 && j < end) --j;
    if (j == i) ++j;  // cannot happen (every character is in one class); never loop forever
    out.push_back({i, j});
    i = j;
  }
}

}  // namespace

struct BpeTokenizer::State {
  std::vector<std::string> tokens;
  std::unordered_map<std::string, std::int64_t> ids;
  std::unordered_map<std::string, int> ranks;  // "left right" -> merge rank
  std::vector<std::string> specials;           // control tokens, longest first
  bool split_digits = false;
  std::string byte_char[256];  // GPT-2's byte -> printable character (UTF-8)
  std::unordered_map<UChar32, std::uint8_t> char_byte;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int64_t>> cache;

  void bpe(const std::string& piece, std::vector<std::int64_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(piece);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<std::string> parts;
    for (unsigned char byte : piece) parts.push_back(byte_char[byte]);
    while (parts.size() > 1) {
      int best = std::numeric_limits<int>::max();
      std::size_t where = 0;
      for (std::size_t k = 0; k + 1 < parts.size(); ++k) {
        auto it = ranks.find(parts[k] + " " + parts[k + 1]);
        if (it != ranks.end() && it->second < best) best = it->second, where = k;
      }
      if (best == std::numeric_limits<int>::max()) break;
      parts[where] += parts[where + 1];
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(where) + 1);
    }
    std::vector<std::int64_t> result;
    for (const auto& part : parts) {
      auto it = ids.find(part);
      if (it == ids.end()) throw Error(fmt::format("tokenizer: the vocabulary has no token for '{}'", part));
      result.push_back(it->second);
    }
    out.insert(out.end(), result.begin(), result.end());
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() < 100000) cache.emplace(piece, std::move(result));
  }

  void encode_plain(const std::string& text, std::vector<std::int64_t>& out) const {
    const std::vector<UChar32> cp = code_points(text);
    // "smollm": every number character alone first, then GPT-2 within the rest.
    std::vector<std::pair<std::size_t, std::size_t>> pieces;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= cp.size(); ++i) {
      const bool digit = i < cp.size() && split_digits && is_number(cp[i]);
      if (i == cp.size() || digit) {
        if (i > start) gpt2_split(cp, start, i, pieces);
        if (digit) pieces.push_back({i, i + 1});
        start = i + 1;
      }
    }
    for (const auto& [a, b] : pieces) {
      std::string piece;
      for (std::size_t k = a; k < b; ++k) piece += to_utf8(cp[k]);
      bpe(piece, out);
    }
  }
};

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::BpeTokenizer(const GgufFile& file) : state_(std::make_unique<State>()) {
  State& s = *state_;
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw Error(fmt::format("{}: tokenizer.ggml.model is \"{}\"; inflab reads byte-level BPE (\"gpt2\")",
                            file.path().string(), model));
  const std::string pre = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "gpt2";
  if (pre != "smollm" && pre != "gpt2" && pre != "default")
    throw Error(
        fmt::format("{}: pre-tokenizer \"{}\" is not implemented (smollm, gpt2)", file.path().string(), pre));
  s.split_digits = pre == "smollm";
  s.tokens = file.get_strings("tokenizer.ggml.tokens");
  std::vector<std::int64_t> types = file.has("tokenizer.ggml.token_type")
                                        ? file.get_ints("tokenizer.ggml.token_type")
                                        : std::vector<std::int64_t>(s.tokens.size(), 1);
  if (types.size() != s.tokens.size())
    throw Error(
        fmt::format("{}: {} token types for {} tokens", file.path().string(), types.size(), s.tokens.size()));
  for (std::size_t i = 0; i < s.tokens.size(); ++i) {
    s.ids.emplace(s.tokens[i], static_cast<std::int64_t>(i));
    if (types[i] == 3) s.specials.push_back(s.tokens[i]);
  }
  std::sort(s.specials.begin(), s.specials.end(),
            [](const auto& a, const auto& b) { return a.size() > b.size(); });
  const auto merges = file.get_strings("tokenizer.ggml.merges");
  for (std::size_t r = 0; r < merges.size(); ++r) s.ranks.emplace(merges[r], static_cast<int>(r));
  // GPT-2's byte encoding: printable bytes stand for themselves, the others for 256 + n.
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const UChar32 c = printable ? b : next++;
    s.byte_char[b] = to_utf8(c);
    s.char_byte[c] = static_cast<std::uint8_t>(b);
  }
}

std::vector<std::int64_t> BpeTokenizer::encode(const std::string& text, bool special) const {
  std::vector<std::int64_t> out;
  if (!special) {
    state_->encode_plain(text, out);
    return out;
  }
  std::size_t position = 0;
  while (position < text.size()) {
    // The earliest control token in the rest of the text (the longest at that position).
    std::size_t best = std::string::npos;
    const std::string* found = nullptr;
    for (const auto& token : state_->specials) {
      const std::size_t at = text.find(token, position);
      if (at != std::string::npos && (at < best || (at == best && token.size() > found->size())))
        best = at, found = &token;
    }
    const std::size_t stop = found ? best : text.size();
    if (stop > position) state_->encode_plain(text.substr(position, stop - position), out);
    if (!found) break;
    out.push_back(state_->ids.at(*found));
    position = best + found->size();
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::string out;
  for (auto id : ids) {
    if (id < 0 || id >= vocabulary_size())
      throw Error(
          fmt::format("tokenizer: token id {} is outside the vocabulary of {}", id, vocabulary_size()));
    const std::string& token = state_->tokens[static_cast<std::size_t>(id)];
    if (std::find(state_->specials.begin(), state_->specials.end(), token) != state_->specials.end()) {
      out += token;
      continue;
    }
    for (UChar32 c : code_points(token)) {
      auto it = state_->char_byte.find(c);
      if (it == state_->char_byte.end()) {
        out += to_utf8(c);  // not a byte-level character: keep it as written
        continue;
      }
      out.push_back(static_cast<char>(it->second));
    }
  }
  return out;
}

std::int64_t BpeTokenizer::id_of(const std::string& token) const {
  auto it = state_->ids.find(token);
  if (it == state_->ids.end()) throw Error(fmt::format("tokenizer: no token '{}' in the vocabulary", token));
  return it->second;
}

std::int64_t BpeTokenizer::vocabulary_size() const {
  return static_cast<std::int64_t>(state_->tokens.size());
}

}  // namespace inflab
