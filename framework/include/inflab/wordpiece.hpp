// BERT WordPiece tokenization, uncased, as Hugging Face `tokenizers` does it for BERT models
// (BertNormalizer + BertPreTokenizer + WordPiece + [CLS]/[SEP] template, longest-first truncation).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

namespace inflab {

struct Encoding {
  std::vector<std::int64_t> input_ids, token_type_ids, attention_mask;
};

class WordPieceTokenizer {
 public:
  // vocab.txt: one token per line, the line number is the id.
  explicit WordPieceTokenizer(const std::filesystem::path& vocab_file, bool lowercase = true);

  std::string normalize(const std::string& text) const;                  // clean, CJK, accents, lowercase
  std::vector<std::string> pre_tokenize(const std::string& text) const;  // whitespace + punctuation
  std::vector<std::string> tokenize(const std::string& text) const;      // word pieces, "##" continuations
  std::int64_t id(const std::string& piece) const;                       // [UNK]'s id when unknown
  // [CLS] a [SEP] (b [SEP]), truncated longest-first to max_length, padded to it when `pad`.
  Encoding encode(const std::string& a, const std::string* b, std::size_t max_length, bool pad) const;
  std::size_t vocab_size() const { return pieces_.size(); }

 private:
  std::unordered_map<std::string, std::int64_t> vocab_;
  std::vector<std::string> pieces_;
  bool lowercase_;
  std::int64_t unk_ = -1, cls_ = -1, sep_ = -1, pad_ = -1;  // set from the vocabulary
};

}  // namespace inflab
