#include "inflab/io.hpp"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <regex>
#include <sstream>

#include "inflab/checksums.hpp"
#include "inflab/error.hpp"

namespace fs = std::filesystem;

namespace inflab {

void write_file_atomic(const fs::path& path, const std::string& contents) {
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  });
}

void write_file_atomic(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path temporary = path;
  temporary += fmt::format(".tmp-{}-{}", ::getpid(), std::random_device{}());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("cannot write {}: {}", temporary.string(), std::strerror(errno)));
    write(out);
    out.flush();
    if (!out) {
      fs::remove(temporary);
      throw Error(fmt::format("writing {} failed (disk full?)", temporary.string()));
    }
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) {
    fs::remove(temporary);
    throw Error(fmt::format("cannot replace {}: {}", path.string(), error.message()));
  }
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {
struct NpyType {
  const char* descr;
  c10::ScalarType type;
};
const NpyType kNpyTypes[] = {
    {"<f4", c10::kFloat}, {"<f8", c10::kDouble}, {"<f2", c10::kHalf}, {"<i8", c10::kLong},
    {"<i4", c10::kInt},   {"<i2", c10::kShort},  {"|b1", c10::kBool}, {"|u1", c10::kByte},
};
}  // namespace

namespace {
std::string npy_header(const at::Tensor& tensor) {
  const char* descr = nullptr;
  for (const auto& t : kNpyTypes)
    if (t.type == tensor.scalar_type()) descr = t.descr;
  if (!descr) throw Error(fmt::format("save_npy: unsupported dtype {}", c10::toString(tensor.scalar_type())));
  std::string shape;
  for (auto size : tensor.sizes()) shape += std::to_string(size) + ", ";
  if (tensor.dim() == 1)
    shape.pop_back();  // "(n,)"
  else if (!shape.empty())
    shape.erase(shape.size() - 2);
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape);
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header;
}
}  // namespace

std::string npy_bytes(const at::Tensor& tensor_in) {
  at::Tensor tensor = tensor_in.contiguous();
  std::string out = npy_header(tensor);
  out.append(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
  return out;
}

void save_npy(const fs::path& path, const at::Tensor& tensor_in) {
  // Streams the tensor's own memory: no copy of the data (a block can be gigabytes).
  at::Tensor tensor = tensor_in.contiguous();
  write_file_atomic(path, [&](std::ostream& out) {
    std::string header = npy_header(tensor);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.nbytes()));
  });
}

namespace {

struct NpyHeader {
  c10::ScalarType type;
  std::vector<std::int64_t> shape;
  std::size_t data_offset;
};

NpyHeader read_npy_header(std::ifstream& in, const fs::path& path) {
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Error(fmt::format("{}: not a .npy file (missing the \\x93NUMPY magic)", path.string()));
  std::uint32_t header_length = 0;
  std::size_t prefix = 10;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<std::uint32_t>(b[3]) << 24);
    prefix = 12;
  } else {
    throw Error(fmt::format("{}: unsupported .npy format version {}", path.string(), int(magic[6])));
  }
  // numpy writes headers of a few hundred bytes (it refuses to read ones over 10,000 by default).
  if (header_length > (1u << 20))
    throw Error(
        fmt::format("{}: header length {} bytes; expected at most 1 MiB", path.string(), header_length));
  std::string header(header_length, '\0');
  if (!in.read(header.data(), header_length))
    throw Error(fmt::format("{}: truncated .npy header", path.string()));
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr'\\s*:\\s*'([^']+)'")))
    throw Error(fmt::format("{}: .npy header has no 'descr': {}", path.string(), header));
  std::string descr = m[1];
  if (std::regex_search(header, m, std::regex("'fortran_order'\\s*:\\s*True")))
    throw Error(
        fmt::format("{}: Fortran-ordered arrays are not supported; save with "
                    "numpy.ascontiguousarray first",
                    path.string()));
  if (!std::regex_search(header, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)")))
    throw Error(fmt::format("{}: .npy header has no 'shape': {}", path.string(), header));
  NpyHeader result{c10::ScalarType::Undefined, {}, prefix + header_length};
  std::string dims = m[1];
  std::regex number("[0-9]+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it) {
    // More than 18 digits does not fit an int64 (std::stoll would throw out_of_range).
    if (it->length() > 18)
      throw Error(fmt::format("{}: shape dimension {} is too large", path.string(), it->str()));
    result.shape.push_back(std::stoll(it->str()));
  }
  if (descr == "=f4") descr = "<f4";
  if (descr == "=f8") descr = "<f8";
  for (const auto& t : kNpyTypes)
    if (descr == t.descr) result.type = t.type;
  if (descr == "<i1" || descr == "|i1") result.type = c10::kChar;
  if (result.type == c10::ScalarType::Undefined)
    throw Error(fmt::format(
        "{}: unsupported dtype '{}' (.npy files inflab reads: little-endian float32, float64, "
        "float16, int64, int32, int16, int8, uint8 or bool; gradient files: the three floating-point ones)",
        path.string(), descr));
  return result;
}

std::size_t element_count(const std::vector<std::int64_t>& shape) {
  std::size_t count = 1;
  for (auto s : shape) {
    // Shapes come from files: a product that overflows would pass the size checks below.
    if (s < 0 || (s > 0 && count > (std::size_t{1} << 60) / static_cast<std::size_t>(s)))
      throw Error("a .npy shape whose element count is negative or above 2^60");
    count *= static_cast<std::size_t>(s);
  }
  return count;
}

// The data a header promises must be in the file before anything is allocated for it.
void check_npy_size(const fs::path& path, const NpyHeader& header) {
  std::size_t bytes = 0;
  try {
    bytes = element_count(header.shape) * c10::elementSize(header.type);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path.string(), e.what()));
  }
  const std::size_t file_size = fs::file_size(path);
  if (file_size < header.data_offset + bytes)
    throw Error(fmt::format("{}: truncated: the header promises {} bytes of data, the file has {}",
                            path.string(), bytes, file_size - std::min(file_size, header.data_offset)));
}

}  // namespace

at::Tensor load_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  NpyHeader header = read_npy_header(in, path);
  check_npy_size(path, header);
  at::Tensor tensor = at::empty(header.shape, at::TensorOptions().dtype(header.type));
  auto bytes = static_cast<std::streamsize>(tensor.nbytes());
  if (!in.read(static_cast<char*>(tensor.data_ptr()), bytes))
    throw Error(fmt::format("{}: truncated: the header promises {} bytes of data, the file has {}",
                            path.string(), bytes, in.gcount()));
  return tensor;
}

namespace {
at::Tensor map_region(const fs::path& path, int fd, std::size_t file_size, std::size_t offset,
                      const std::vector<std::int64_t>& shape, c10::ScalarType type, bool writable) {
  void* address =
      ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, writable ? MAP_SHARED : MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (address == MAP_FAILED)
    throw Error(fmt::format("{}: cannot memory-map ({})", path.string(), std::strerror(errno)));
  auto* data = static_cast<char*>(address) + offset;
  return at::from_blob(
      data, shape, [address, file_size](void*) { ::munmap(address, file_size); },
      at::TensorOptions().dtype(type));
}
}  // namespace

at::Tensor map_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  NpyHeader header = read_npy_header(in, path);
  in.close();
  check_npy_size(path, header);
  const std::size_t bytes = element_count(header.shape) * c10::elementSize(header.type);
  const std::size_t file_size = fs::file_size(path);
  if (bytes == 0) return load_npy(path);
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  return map_region(path, fd, file_size, header.data_offset, header.shape, header.type, false);
}

at::Tensor create_mapped_npy(const fs::path& path, const std::vector<std::int64_t>& shape,
                             c10::ScalarType type) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  std::string header = npy_header(at::empty({0}, at::TensorOptions().dtype(type)));
  // Rewrite the header for the real shape: npy_bytes of an empty tensor gives the layout.
  std::string shape_text;
  for (auto s : shape) shape_text += std::to_string(s) + ", ";
  if (shape.size() != 1 && !shape_text.empty())
    shape_text.erase(shape_text.size() - 2);
  else if (!shape_text.empty())
    shape_text.pop_back();
  std::string descr = header.substr(header.find("'descr': '") + 10, 3);
  std::string dict =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape_text);
  dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
  dict.push_back('\n');
  std::string prefix("\x93NUMPY\x01\x00", 8);
  prefix.push_back(static_cast<char>(dict.size() & 0xff));
  prefix.push_back(static_cast<char>(dict.size() >> 8));
  prefix += dict;
  const std::size_t bytes = element_count(shape) * c10::elementSize(type);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error(fmt::format("{}: cannot create ({})", path.string(), std::strerror(errno)));
  // Reserve the blocks now: a sparse file on a full disk would fail later, inside a write to the
  // mapping, with SIGBUS instead of an error.
  int reserved = 0;
  if (::write(fd, prefix.data(), prefix.size()) != static_cast<ssize_t>(prefix.size()) ||
      (reserved = ::posix_fallocate(fd, 0, static_cast<off_t>(prefix.size() + bytes))) != 0) {
    const int error = reserved != 0 ? reserved : errno;
    ::close(fd);
    ::unlink(path.c_str());
    throw Error(fmt::format("{}: cannot reserve {} bytes ({})", path.string(), prefix.size() + bytes,
                            std::strerror(error)));
  }
  if (bytes == 0) {
    ::close(fd);
    return at::empty(shape, at::TensorOptions().dtype(type));
  }
  return map_region(path, fd, prefix.size() + bytes, prefix.size(), shape, type, true);
}

namespace {
constexpr std::uint64_t kFnvOffsetBasis = 14695981039346656037ULL, kFnvPrime = 1099511628211ULL;
}  // namespace

std::string content_hash(const std::string& text) {
  std::uint64_t hash = kFnvOffsetBasis;  // FNV-1a 64
  for (unsigned char c : text) hash = (hash ^ c) * kFnvPrime;
  return fmt::format("{:016x}", hash);
}

std::string file_checksum(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::uint64_t hash = kFnvOffsetBasis, total = 0;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = static_cast<std::size_t>(in.gcount());
    std::size_t i = 0;
    for (; i + 8 <= got; i += 8) {
      std::uint64_t word;
      std::memcpy(&word, buffer.data() + i, 8);
      hash = (hash ^ word) * kFnvPrime;
    }
    for (; i < got; ++i) hash = (hash ^ static_cast<unsigned char>(buffer[i])) * kFnvPrime;
    total += got;
  }
  return fmt::format("{:016x} {}", hash, total);
}

void write_checksum_sidecar(const fs::path& data_file, const fs::path& sidecar) {
  write_file_atomic(sidecar, file_checksum(data_file) + "\n");
}

std::string verify_checksum_sidecar(const fs::path& data_file) {
  fs::path sidecar = data_file;
  sidecar += ".checksum";
  if (!fs::exists(sidecar)) return sidecar.string() + " is missing";
  std::string expected = read_file(sidecar);
  while (!expected.empty() && std::isspace(static_cast<unsigned char>(expected.back()))) expected.pop_back();
  std::string found = file_checksum(data_file);
  if (found != expected)
    return fmt::format("{}: checksum and size {}, expected {}", data_file.string(), found, expected);
  return "";
}

void write_directory_checksums(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().filename() != "CHECKSUMS")
      files.push_back(fs::relative(entry.path(), dir).generic_string());
  std::sort(files.begin(), files.end());
  std::string list;
  for (const auto& file : files) list += file_checksum(dir / file) + " " + file + "\n";
  write_file_atomic(dir / "CHECKSUMS", list);
}

std::string verify_directory_checksums(const fs::path& dir,
                                       const std::function<bool(const std::string&)>& size_only) {
  if (!fs::exists(dir / "CHECKSUMS")) return (dir / "CHECKSUMS").string() + " is missing";
  std::istringstream lines(read_file(dir / "CHECKSUMS"));
  std::string hash, size, file;
  while (lines >> hash >> size && std::getline(lines >> std::ws, file)) {
    const fs::path path = dir / file;
    if (!fs::exists(path)) return path.string() + " is missing";
    if (size_only && size_only(file)) {
      if (std::to_string(fs::file_size(path)) != size)
        return fmt::format("{}: {} bytes, expected {}", path.string(), fs::file_size(path), size);
    } else if (const std::string found = file_checksum(path); found != hash + " " + size) {
      return fmt::format("{}: checksum and size {}, expected {} {}", path.string(), found, hash, size);
    }
  }
  return "";
}

std::string verify_directory_checksums(const fs::path& dir) {
  return verify_directory_checksums(dir, nullptr);
}

void remove_stale_temporaries(const fs::path& dir) {
  static const std::regex temporary(R"(.*\.tmp-(\d{1,9})(-\d+)?)");  // 9 digits: fits a pid_t
  std::error_code error;
  if (!fs::is_directory(dir, error)) return;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    std::smatch match;
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, match, temporary)) continue;
    const auto pid = static_cast<pid_t>(std::stol(match[1].str()));
    // kill(pid, 0) fails with ESRCH only when no such process exists (EPERM: alive, not ours).
    const bool alive = pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH);
    if (!alive) stale.push_back(entry.path());
  }
  for (const auto& path : stale) fs::remove_all(path, error);
}

}  // namespace inflab
