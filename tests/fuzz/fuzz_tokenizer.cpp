// The WordPiece tokenizer on arbitrary bytes (invalid UTF-8 included), with a small vocabulary
// committed next to the corpus: encodings keep their invariants whatever the text.
#include "fuzz_common.hpp"
#include "inflab/wordpiece.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const inflab::WordPieceTokenizer tokenizer(std::filesystem::path(INFLAB_FUZZ_DIR) / "vocab.txt",
                                                    true);
  std::string text = fuzz::as_string(data, size);
  const std::size_t cut = size / 2;
  std::string a = text.substr(0, cut), b = text.substr(cut);
  fuzz::expect_ok_or_error([&] {
    for (bool pair : {false, true}) {
      auto e = tokenizer.encode(a, pair ? &b : nullptr, 16, true);
      if (e.input_ids.size() != 16 || e.attention_mask.size() != 16 || e.token_type_ids.size() != 16)
        __builtin_trap();
      for (auto id : e.input_ids)
        if (id < 0 || id >= static_cast<std::int64_t>(tokenizer.vocab_size())) __builtin_trap();
    }
  });
  return 0;
}
