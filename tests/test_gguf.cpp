// The GGUF reader on files written here byte by byte: every metadata type, each supported tensor
// type dequantized against the format's formulas applied by hand, and refusals of damaged files.
#include <c10/util/Half.h>

#include "inflab/gguf.hpp"
// clang-format off
#include <catch2/catch.hpp>
// clang-format on
#include <cstring>

#include "helpers.hpp"
#include "inflab/error.hpp"

using Catch::Matchers::Contains;

namespace {

struct Writer {
  std::string bytes;
  template <class T>
  void put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void str(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes += s;
  }
  void half(float f) { put<std::uint16_t>(c10::Half(f).x); }
  void align(std::size_t a) {
    while (bytes.size() % a) bytes.push_back('\0');
  }
};

struct Tensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type;
  std::string data;
};

// A GGUF v3 file: the metadata of every type, then `tensors` (offsets assigned, 32-aligned).
std::string gguf_file(const std::vector<Tensor>& tensors) {
  Writer w;
  w.bytes = "GGUF";
  w.put<std::uint32_t>(3);
  w.put<std::uint64_t>(tensors.size());
  w.put<std::uint64_t>(14);
  auto key = [&](const std::string& k, std::uint32_t type) { w.str(k), w.put<std::uint32_t>(type); };
  key("general.alignment", 4), w.put<std::uint32_t>(32);
  key("t.u8", 0), w.put<std::uint8_t>(200);
  key("t.i8", 1), w.put<std::int8_t>(-5);
  key("t.u16", 2), w.put<std::uint16_t>(60000);
  key("t.i16", 3), w.put<std::int16_t>(-30000);
  key("t.u32", 4), w.put<std::uint32_t>(4000000000u);
  key("t.i32", 5), w.put<std::int32_t>(-2000000000);
  key("t.f32", 6), w.put<float>(1.5f);
  key("t.bool", 7), w.put<std::uint8_t>(1);
  key("t.string", 8), w.str("h\xc3\xa9llo");
  key("t.strings", 9), w.put<std::uint32_t>(8), w.put<std::uint64_t>(2), w.str("a b"), w.str("<|x|>");
  key("t.u64", 10), w.put<std::uint64_t>(1ull << 40);
  key("t.i64", 11), w.put<std::int64_t>(-(1ll << 40));
  key("t.f64", 12), w.put<double>(2.25);
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> offsets;
  for (const auto& t : tensors) {
    w.str(t.name);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(t.ne.size()));
    for (auto n : t.ne) w.put<std::uint64_t>(n);
    w.put<std::uint32_t>(t.type);
    w.put<std::uint64_t>(offset);
    offsets.push_back(offset);
    offset += (t.data.size() + 31) / 32 * 32;
  }
  w.align(32);
  for (const auto& t : tensors) {
    w.bytes += t.data;
    w.align(32);
  }
  return w.bytes;
}

std::vector<Tensor> sample_tensors() {
  std::vector<Tensor> out;
  Writer f32, f16, q8, q41;
  for (int i = 0; i < 8; ++i) f32.put<float>(0.5f * static_cast<float>(i) - 1);
  for (float v : {1.0f, -2.5f, 0.125f}) f16.half(v);
  for (int b = 0; b < 2; ++b) {  // Q8_0: scale, 32 signed bytes
    q8.half(b == 0 ? 0.5f : -0.25f);
    for (int j = 0; j < 32; ++j) q8.put<std::int8_t>(static_cast<std::int8_t>(j - 16 + b));
  }
  q41.half(0.25f), q41.half(-1.0f);  // Q4_1: scale, minimum, 16 bytes of two nibbles
  for (int j = 0; j < 16; ++j) q41.put<std::uint8_t>(static_cast<std::uint8_t>((j & 0xF) | ((15 - j) << 4)));
  out.push_back({"f32", {4, 2}, 0, f32.bytes});
  out.push_back({"f16", {3}, 1, f16.bytes});
  out.push_back({"q8", {32, 2}, 8, q8.bytes});
  out.push_back({"q41", {32}, 3, q41.bytes});
  return out;
}

}  // namespace

TEST_CASE("gguf: metadata of every type and the tensor table are read", "[gguf]") {
  test::TempDir dir;
  inflab::GgufFile file(dir.write("t.gguf", gguf_file(sample_tensors())));
  CHECK(file.version() == 3);
  CHECK(file.get_int("t.u8") == 200);
  CHECK(file.get_int("t.i8") == -5);
  CHECK(file.get_int("t.u16") == 60000);
  CHECK(file.get_int("t.i16") == -30000);
  CHECK(file.get_int("t.u32") == 4000000000ll);
  CHECK(file.get_int("t.i32") == -2000000000);
  CHECK(file.get_number("t.f32") == 1.5);
  CHECK(file.get_bool("t.bool"));
  CHECK(file.get_string("t.string") == "h\xc3\xa9llo");
  CHECK(file.get_strings("t.strings") == std::vector<std::string>{"a b", "<|x|>"});
  CHECK(file.get_int("t.u64") == (1ll << 40));
  CHECK(file.get_int("t.i64") == -(1ll << 40));
  CHECK(file.get_number("t.f64") == 2.25);
  CHECK_THROWS_WITH(file.get_string("t.u8"), Contains("'t.u8'") && Contains("expected a string"));
  CHECK_THROWS_WITH(file.get_int("missing.key"), Contains("no metadata key 'missing.key'"));
  REQUIRE(file.tensors().size() == 4);
  CHECK(file.tensor("q8").ne == std::vector<std::int64_t>{32, 2});
  CHECK_THROWS_WITH(file.tensor("nope"), Contains("no tensor named 'nope'"));
}

TEST_CASE("gguf: F32, F16, Q8_0 and Q4_1 dequantize as the format defines", "[gguf]") {
  test::TempDir dir;
  inflab::GgufFile file(dir.write("t.gguf", gguf_file(sample_tensors())));
  auto f32 = file.dequantize("f32");
  REQUIRE(f32.sizes() == at::IntArrayRef({2, 4}));  // ne = {4, 2}: 2 rows of 4
  for (int i = 0; i < 8; ++i) CHECK(f32.reshape({-1})[i].item<float>() == 0.5f * static_cast<float>(i) - 1);
  auto f16 = file.dequantize("f16");
  CHECK(f16[0].item<float>() == 1.0f);
  CHECK(f16[1].item<float>() == -2.5f);
  CHECK(f16[2].item<float>() == 0.125f);
  auto q8 = file.dequantize("q8");
  REQUIRE(q8.sizes() == at::IntArrayRef({2, 32}));
  for (int b = 0; b < 2; ++b)
    for (int j = 0; j < 32; ++j)
      CHECK(q8[b][j].item<float>() == (b == 0 ? 0.5f : -0.25f) * static_cast<float>(j - 16 + b));
  auto q41 = file.dequantize("q41");
  for (int j = 0; j < 16; ++j) {
    CHECK(q41[j].item<float>() == 0.25f * static_cast<float>(j) - 1.0f);            // low nibble: element j
    CHECK(q41[j + 16].item<float>() == 0.25f * static_cast<float>(15 - j) - 1.0f);  // high: element j + 16
  }
}

TEST_CASE("gguf: damaged or unsupported files are refused with the reason", "[gguf]") {
  test::TempDir dir;
  const std::string good = gguf_file(sample_tensors());
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("a.gguf", "GGML" + good.substr(4))),
                    Contains("not a GGUF file"));
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("b.gguf", good.substr(0, good.size() - 40))),
                    Contains("'q41'") && Contains("beyond the end"));
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("c.gguf", good.substr(0, 60))), Contains("truncated"));
  std::string version = good;
  version[4] = 9;
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("d.gguf", version)), Contains("version 9"));
  auto tensors = sample_tensors();
  tensors.push_back({"q5", {32}, 6, std::string(22, '\0')});  // Q5_0: a known size, no dequantizer
  inflab::GgufFile q5(dir.write("e.gguf", gguf_file(tensors)));
  CHECK_THROWS_WITH(q5.dequantize("q5"), Contains("'q5' is Q5_0"));
  tensors.back() = {"odd", {32}, 77, std::string(32, '\0')};
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("f.gguf", gguf_file(tensors))),
                    Contains("unknown ggml type 77"));
  tensors.back() = {"rows", {30}, 8, std::string(34, '\0')};
  CHECK_THROWS_WITH(inflab::GgufFile(dir.write("g.gguf", gguf_file(tensors))),
                    Contains("not a multiple of its block"));
}
