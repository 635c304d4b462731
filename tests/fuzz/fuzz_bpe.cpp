// The byte-level BPE tokenizer on arbitrary bytes, with a small vocabulary committed next to the
// corpus (vocab.gguf): valid UTF-8 round-trips through encode and decode exactly; ids stay in range.
#include "fuzz_common.hpp"
#include "inflab/bpe.hpp"
#include "inflab/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const inflab::GgufFile file(std::filesystem::path(INFLAB_FUZZ_DIR) / "vocab.gguf");
  static const inflab::BpeTokenizer tokenizer(file);
  const std::string text = fuzz::as_string(data, size);
  fuzz::expect_ok_or_error([&] {
    for (bool special : {false, true}) {
      auto ids = tokenizer.encode(text, special);
      for (auto id : ids)
        if (id < 0 || id >= tokenizer.vocabulary_size()) __builtin_trap();
      if (tokenizer.decode(ids) != text) __builtin_trap();  // byte-level: nothing is lost
    }
  });
  return 0;
}
