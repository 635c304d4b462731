// Byte-level BPE (GPT-2 style), built from a GGUF file's tokenizer.ggml.* metadata: the tokens,
// the merges in rank order, the token types (3 = control tokens such as <|im_start|>) and the
// pre-tokenizer: "smollm" splits every digit off (\p{N}) before the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// as llama.cpp does; "gpt2" applies the GPT-2 pattern alone.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace inflab {

class GgufFile;

class BpeTokenizer {
 public:
  explicit BpeTokenizer(const GgufFile& file);
  ~BpeTokenizer();
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Token ids of UTF-8 text (invalid UTF-8 is an Error naming the byte). With `special`, control
  // tokens written in the text (<|im_start|>, ...) become their ids; without, they are plain text.
  std::vector<std::int64_t> encode(const std::string& text, bool special = false) const;
  // The text of token ids (control tokens as written); an id outside the vocabulary is an Error.
  std::string decode(const std::vector<std::int64_t>& ids) const;
  // The id of a token written exactly so ("<|im_end|>"); an Error when the vocabulary lacks it.
  std::int64_t id_of(const std::string& token) const;
  std::int64_t vocabulary_size() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace inflab
