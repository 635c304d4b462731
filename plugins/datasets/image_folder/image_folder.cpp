// A user's own images, one sub-folder per class (the layout of torchvision's ImageFolder):
//   [dataset]
//   plugin = "image_folder"
//   train = "examples/image_folder/train"      # train/<class>/<image>.png|.jpg|.jpeg
//   size = 8                                    # every image resized to 8 x 8 (0: keep, must agree)
// PNG is decoded by libpng, JPEG by libjpeg(-turbo); images become grey (channels = 1) or RGB
// (channels = 3) values in [0, 1], flattened channel-major (C x H x W) per example. A validation
// folder of the same layout, or a share of the training folder drawn with shuffle_seed.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>
#include <map>

namespace fs = std::filesystem;

namespace {

struct Image {
  std::int64_t height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;  // height x width x channels
};

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Image decode_png(const fs::path& file, int channels) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, file.c_str()))
    throw inflab::Error(fmt::format("{}: not a readable PNG image ({})", file.string(), image.message));
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  Image out{image.height, image.width, channels, {}};
  out.pixels.resize(PNG_IMAGE_SIZE(image));
  const bool ok = png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr);
  const std::string message = image.message;
  png_image_free(&image);
  if (!ok)
    throw inflab::Error(fmt::format("{}: the PNG image could not be decoded ({})", file.string(), message));
  return out;
}

// libjpeg reports errors through error_exit, which must not return: it jumps back to decode_jpeg.
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

// A warning (level -1) means corrupt data, such as a truncated file that would decode with grey
// rows made up: an error here, never a silently wrong image. Trace messages (level >= 0) are ignored.
void jpeg_emit_message(j_common_ptr info, int level) {
  if (level < 0) jpeg_error_exit(info);
}

// Decodes into `out` (sized once the header is read); returns false with `error->message` set.
// No object with a destructor lives in this frame, so the longjmp skips nothing.
bool decode_jpeg_into(std::FILE* input, int channels, Image& out, JpegError* error) {
  jpeg_decompress_struct info;
  info.err = jpeg_std_error(&error->manager);
  error->manager.error_exit = jpeg_error_exit;
  error->manager.emit_message = jpeg_emit_message;
  if (setjmp(error->jump)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_stdio_src(&info, input);
  jpeg_read_header(&info, TRUE);
  info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&info);
  out.height = info.output_height, out.width = info.output_width, out.channels = info.output_components;
  out.pixels.resize(static_cast<std::size_t>(out.height * out.width * out.channels));
  while (info.output_scanline < info.output_height) {
    JSAMPROW row =
        out.pixels.data() + static_cast<std::size_t>(info.output_scanline) * out.width * out.channels;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return true;
}

Image decode_jpeg(const fs::path& file, int channels) {
  std::FILE* input = std::fopen(file.c_str(), "rb");
  if (!input) throw inflab::Error(fmt::format("{}: cannot be opened", file.string()));
  Image out;
  JpegError error{};
  const bool ok = decode_jpeg_into(input, channels, out, &error);
  std::fclose(input);
  if (!ok)
    throw inflab::Error(
        fmt::format("{}: the JPEG image could not be decoded ({})", file.string(), error.message));
  return out;
}

bool is_image(const fs::path& file) {
  const std::string extension = lower(file.extension().string());
  return extension == ".png" || extension == ".jpg" || extension == ".jpeg";
}

// The images of a folder: (class index, file), classes by sub-folder; files sorted by name within a
// class, so an example's id (its position) is stable.
struct Listing {
  std::vector<std::string> classes;  // sorted sub-folder names (the training folder's, for validation)
  std::vector<std::int64_t> labels;
  std::vector<fs::path> files;
};

std::vector<std::string> class_folders(const fs::path& root, const std::string& key) {
  if (!fs::is_directory(root))
    throw inflab::Error(
        fmt::format("dataset image_folder: key 'dataset.{}': {} is not a directory (expected "
                    "one sub-folder of images per class)",
                    key, root.string()));
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path().filename().string()[0] != '.')
      classes.push_back(entry.path().filename().string());
  std::sort(classes.begin(), classes.end());
  if (classes.empty())
    throw inflab::Error(fmt::format("{}: no class sub-folders (expected {}/<class>/<image>.png|.jpg)",
                                    root.string(), root.string()));
  return classes;
}

// The folder named by dataset.`key`; `classes`: the training folder's (empty: this folder's own).
Listing list_images(const fs::path& root, const std::string& key, const std::vector<std::string>& classes) {
  Listing listing;
  const std::vector<std::string> folders = class_folders(root, key);
  listing.classes = classes.empty() ? folders : classes;
  for (const auto& name : folders) {
    auto found = std::find(listing.classes.begin(), listing.classes.end(), name);
    if (found == listing.classes.end())
      throw inflab::Error(fmt::format("{}: class '{}' does not occur in the training folder (classes: {})",
                                      (root / name).string(), name, fmt::join(listing.classes, ", ")));
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(root / name))
      if (entry.is_regular_file() && is_image(entry.path())) files.push_back(entry.path());
    if (files.empty())
      throw inflab::Error(
          fmt::format("{}: no images (.png, .jpg, .jpeg) in this class folder", (root / name).string()));
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      listing.labels.push_back(found - listing.classes.begin());
      listing.files.push_back(f);
    }
  }
  return listing;
}

class ImageFolder : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    options_ = options;
    if (options.get_int("channels") != 1 && options.get_int("channels") != 3)
      throw inflab::Error(
          fmt::format("dataset image_folder: key 'dataset.channels': expected 1 (grey) or 3 "
                      "(RGB), found {}",
                      options.get_int("channels")));
    if (options.get_int("size") < 0)
      throw inflab::Error(fmt::format(
          "dataset image_folder: key 'dataset.size': expected a side in pixels >= 1, or 0 to keep, found {}",
          options.get_int("size")));
  }

  inflab::DatasetSplits load() override {
    const std::string train_root = options_.get_string("train");
    if (train_root.empty())
      throw inflab::Error(
          "dataset image_folder: key 'dataset.train' is required: a folder with one sub-folder per class");
    const Listing train = list_images(train_root, "train", {});
    const std::string validation_root = options_.get_string("validation");
    const auto total = static_cast<std::int64_t>(train.files.size());
    std::int64_t n_pretrain = options_.get_int("n_pretrain"), n_train = options_.get_int("n_train"),
                 n_validation = options_.get_int("n_validation");
    const auto seed = static_cast<std::uint64_t>(options_.get_int("shuffle_seed"));
    inflab::DatasetSplits splits;
    splits.class_names = train.classes;
    if (!validation_root.empty()) {
      const Listing validation = list_images(validation_root, "validation", train.classes);
      const auto available = static_cast<std::int64_t>(validation.files.size());
      if (n_validation == 0) n_validation = available;
      if (n_train == 0) n_train = total - n_pretrain;
      check_sizes(n_train, n_validation);
      auto from_train = inflab::shuffle_split("image_folder", total, n_pretrain, n_train, 0, seed);
      auto from_validation = inflab::shuffle_split("image_folder", available, 0, 0, n_validation, seed + 1);
      splits.pretrain = read(train, from_train.pretrain, 0);
      splits.train = read(train, from_train.train, 0);
      splits.validation = read(validation, from_validation.validation, total);
    } else {
      if (n_validation == 0)
        n_validation =
            std::max<std::int64_t>(1, std::llround(options_.get_double("validation_share") * double(total)));
      if (n_train == 0) n_train = total - n_validation - n_pretrain;
      check_sizes(n_train, n_validation);
      auto indices = inflab::shuffle_split("image_folder", total, n_pretrain, n_train, n_validation, seed);
      splits.pretrain = read(train, indices.pretrain, 0);
      splits.train = read(train, indices.train, 0);
      splits.validation = read(train, indices.validation, 0);
    }
    return splits;
  }

 private:
  static void check_sizes(std::int64_t n_train, std::int64_t n_validation) {
    if (n_train < 1 || n_validation < 1)
      throw inflab::Error(
          fmt::format("dataset image_folder: n_train and n_validation must be at least 1 (found {} and {}); "
                      "add images or "
                      "lower n_pretrain / n_validation",
                      n_train, n_validation));
  }

  // The images `rows` of a listing as an n x (C*H*W) float tensor in [0, 1]. ids: the position in
  // the listing, plus `id_offset` (validation folders continue after the training folder's ids).
  inflab::Split read(const Listing& listing, const std::vector<std::int64_t>& rows, std::int64_t id_offset) {
    const int channels = static_cast<int>(options_.get_int("channels"));
    const std::int64_t side = options_.get_int("size");
    inflab::Split split;
    const auto count = static_cast<std::int64_t>(rows.size());
    split.labels = at::empty({count}, at::kLong);
    std::vector<at::Tensor> images;
    for (std::int64_t k = 0; k < count; ++k) {
      const fs::path& file = listing.files[rows[k]];
      const std::string extension = lower(file.extension().string());
      Image image = extension == ".png" ? decode_png(file, channels) : decode_jpeg(file, channels);
      at::Tensor pixels =
          at::from_blob(image.pixels.data(), {image.height, image.width, image.channels}, at::kByte)
              .permute({2, 0, 1})
              .to(at::kFloat)
              .div_(255.0);
      if (side > 0 && (image.height != side || image.width != side))
        pixels =
            at::_upsample_bilinear2d_aa(pixels.unsqueeze(0), {side, side}, false).squeeze(0).clamp_(0, 1);
      if (!images.empty() && pixels.sizes() != images.front().sizes())
        throw inflab::Error(fmt::format(
            "{}: {} x {} pixels, but {} is {} x {}; set the dataset's size to resize every image to one side",
            file.string(), image.height, image.width, listing.files[rows[0]].string(), images.front().size(1),
            images.front().size(2)));
      images.push_back(pixels.contiguous());
      split.labels[k] = listing.labels[rows[k]];
      split.ids.push_back(rows[k] + id_offset);
    }
    split.inputs =
        count ? at::stack(images).reshape({count, -1}).contiguous() : at::empty({0, 1}, at::kFloat);
    return split;
  }

  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  using inflab::OptionType;
  return {
      {"train", OptionType::String, std::string(),
       "the training folder: one sub-folder per class (its name is the class), .png/.jpg/.jpeg images", true},
      {"validation", OptionType::String, std::string(),
       "a validation folder of the same layout and classes (default: a share of the training folder)"},
      {"validation_share", OptionType::Double, 0.2,
       "without a validation folder: the share of the training images that become the queries", false,
       inflab::Range{0, 1, true, true}},
      {"n_train", OptionType::Int, std::int64_t{0}, "training images (the ones scored); 0: all that remain",
       false, inflab::between(0, 1e9)},
      {"n_validation", OptionType::Int, std::int64_t{0},
       "validation images (queries); 0: all of the validation folder, or validation_share of the training "
       "one",
       false, inflab::between(0, 1e9)},
      {"n_pretrain", OptionType::Int, std::int64_t{0},
       "images that pretrain the frozen base, disjoint from train (mlp_lora and cnn_lora need some)", false,
       inflab::between(0, 1e9)},
      {"shuffle_seed", OptionType::Int, std::int64_t{0}, "which images are drawn for which split"},
      {"size", OptionType::Int, std::int64_t{0},
       "resize every image to size x size (antialiased bilinear); 0: keep, and all must agree", false,
       inflab::between(0, 4096)},
      {"channels", OptionType::Int, std::int64_t{1}, "1: grey (cnn_lora needs it), 3: RGB", false,
       inflab::between(1, 3)},
  };
}

}  // namespace

INFLAB_PLUGIN(Dataset, "image_folder", "1.0.0",
              "Your own images, one sub-folder per class (PNG via libpng, JPEG via libjpeg)", options,
              ImageFolder)
