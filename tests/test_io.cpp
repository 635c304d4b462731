#include <ATen/ops/arange.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

TEST_CASE("atomic writes replace the whole file and leave no temporary behind", "[io]") {
  test::TempDir dir;
  fs::path file = dir.path / "sub" / "result.csv";
  inflab::write_file_atomic(file, "old contents\n");
  inflab::write_file_atomic(file, "new\n");
  CHECK(inflab::read_file(file) == "new\n");
  int entries = 0;
  for (auto& e : fs::directory_iterator(file.parent_path())) entries += 1, (void)e;
  CHECK(entries == 1);
}

TEST_CASE("a failed atomic write keeps the previous file and cleans up", "[io]") {
  test::TempDir dir;
  fs::path target = dir.path / "occupied";
  fs::create_directories(target / "child");  // rename onto a non-empty directory must fail
  REQUIRE_THROWS(inflab::write_file_atomic(target, "data"));
  CHECK(fs::is_directory(target / "child"));
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir.path)) entries += 1, (void)e;
  CHECK(entries == 1);  // no leftover temporary file
}

TEST_CASE(".npy files written as numpy writes them are read exactly", "[io]") {
  test::TempDir dir;
  // numpy.save(np.array([[1, 2, 3], [4, 5, 6]], dtype='<f4')), header built by hand.
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  header.append(128 - 10 - header.size() - 1, ' ');
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size());
  bytes += '\0';
  bytes += header;
  for (float v : {1.f, 2.f, 3.f, 4.f, 5.f, 6.f}) bytes.append(reinterpret_cast<const char*>(&v), 4);
  auto file = dir.write("a.npy", bytes);
  at::Tensor t = inflab::load_npy(file);
  REQUIRE(t.sizes() == at::IntArrayRef({2, 3}));
  CHECK(t.scalar_type() == c10::kFloat);
  CHECK(t[1][2].item<float>() == 6.f);
  // Our writer produces the same bytes numpy would.
  CHECK(inflab::npy_bytes(t) == bytes);
}

TEST_CASE(".npy errors name the file and the problem", "[io]") {
  test::TempDir dir;
  at::Tensor t = at::arange(12, c10::kFloat).reshape({3, 4});
  std::string bytes = inflab::npy_bytes(t);
  auto truncated = dir.write("truncated.npy", bytes.substr(0, bytes.size() - 5));
  REQUIRE_THROWS_WITH(inflab::load_npy(truncated), Contains("truncated.npy") && Contains("truncated"));
  auto garbage = dir.write("garbage.npy", "hello");
  REQUIRE_THROWS_WITH(inflab::load_npy(garbage), Contains("garbage.npy") && Contains("not a .npy"));
  std::string big_endian = bytes;
  big_endian.replace(big_endian.find("<f4"), 3, ">f4");
  auto be = dir.write("be.npy", big_endian);
  REQUIRE_THROWS_WITH(inflab::load_npy(be), Contains("be.npy") && Contains("unsupported dtype '>f4'"));
  auto roundtrip = dir.path / "r.npy";
  inflab::save_npy(roundtrip, t);
  CHECK(inflab::load_npy(roundtrip).equal(t));
}

TEST_CASE("content hashes are stable and sensitive", "[io]") {
  // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (published test vector).
  CHECK(inflab::content_hash("a") == "af63dc4c8601ec8c");
  CHECK(inflab::content_hash("rank = 4") != inflab::content_hash("rank = 8"));
}
