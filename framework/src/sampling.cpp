#include "inflab/sampling.hpp"

#include <fmt/format.h>
#include <png.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/model.hpp"
#include "inflab/task.hpp"

namespace inflab {

at::Tensor sample_images(Model& model, const std::vector<std::int64_t>& condition_ids,
                         at::IntArrayRef example_shape, const SamplingOptions& options) {
  if (options.sampling_steps < 1 || options.sampling_steps > options.diffusion_steps)
    throw Error(fmt::format("sampling: expected 1 to {} DDIM steps, found {}", options.diffusion_steps,
                            options.sampling_steps));
  if (!(options.guidance >= 0) || !std::isfinite(options.guidance))
    throw Error(fmt::format("sampling: expected a guidance >= 0, found {}", options.guidance));
  Denoiser& denoiser = require_capability<Denoiser>(model, "sampling images");
  torch::NoGradGuard no_grad;
  model.set_training(false);
  const torch::Tensor conditions = torch::tensor(condition_ids, torch::kLong);
  const torch::Tensor alpha_bar = ddpm_alphas_cumprod(options.diffusion_steps).to(torch::kDouble);
  std::vector<std::int64_t> shape{conditions.size(0)};
  shape.insert(shape.end(), example_shape.begin(), example_shape.end());
  auto generator = at::detail::createCPUGenerator(options.seed);
  torch::Tensor x = at::normal(0.0, 1.0, shape, generator);
  const auto steps = options.sampling_steps;
  for (std::int64_t i = steps - 1; i >= 0; --i) {
    // Timesteps evenly spaced over [0, T - 1], from the noisiest down to 0.
    const auto t = steps == 1 ? options.diffusion_steps - 1
                              : static_cast<std::int64_t>(std::llround(
                                    double(i) * double(options.diffusion_steps - 1) / double(steps - 1)));
    const auto t_prev =
        i == 0 ? -1
               : static_cast<std::int64_t>(
                     std::llround(double(i - 1) * double(options.diffusion_steps - 1) / double(steps - 1)));
    const double a = alpha_bar[t].item<double>(),
                 a_prev = t_prev < 0 ? 1.0 : alpha_bar[t_prev].item<double>();
    torch::Tensor eps;
    if (options.guidance == 1.0) {
      eps = denoiser.denoise(x, torch::full({x.size(0)}, t, torch::kLong), conditions);
    } else {  // the conditional and the unconditional prediction in one batch
      const torch::Tensor both =
          denoiser.denoise(torch::cat({x, x}), torch::full({2 * x.size(0)}, t, torch::kLong),
                           torch::cat({conditions, torch::full_like(conditions, -1)}));
      const torch::Tensor conditional = both.narrow(0, 0, x.size(0)),
                          none = both.narrow(0, x.size(0), x.size(0));
      eps = none + options.guidance * (conditional - none);
    }
    torch::Tensor x0 = ((x - std::sqrt(1 - a) * eps) / std::sqrt(a)).clamp(-options.clip, options.clip);
    eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);  // the noise consistent with the clipped image
    x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
  }
  return x;
}

void check_guidance(double guidance, double condition_dropout, const std::string& key) {
  if (!(guidance >= 0) || !std::isfinite(guidance))
    throw Error(fmt::format("{}: expected a guidance >= 0 (1: none), found {}", key, guidance));
  if (guidance != 1.0 && condition_dropout <= 0)
    throw Error(fmt::format(
        "{} = {}: classifier-free guidance needs a base pretrained without its condition now and then, "
        "but training.pretrain_condition_dropout is 0 (set it, e.g. 0.1, which pretrains a new base; "
        "or use guidance 1)",
        key, guidance));
}

void save_png_grid(const std::filesystem::path& file, const at::Tensor& images, std::int64_t columns,
                   double low, double high) {
  const std::int64_t n = images.size(0);
  if (n < 1 || columns < 1) throw Error(fmt::format("{}: no images to write", file.string()));
  const std::int64_t pixels = images.numel() / n;
  const auto side = static_cast<std::int64_t>(std::lround(std::sqrt(double(pixels))));
  if (side * side != pixels)
    throw Error(
        fmt::format("{}: expected square grey images, found {} values per image", file.string(), pixels));
  const std::int64_t rows = (n + columns - 1) / columns, gap = 1;
  const std::int64_t width = columns * (side + gap) + gap, height = rows * (side + gap) + gap;
  torch::Tensor grey = ((images.reshape({n, side, side}).to(torch::kDouble) - low) / (high - low) * 255.0)
                           .round()
                           .clamp(0, 255);
  std::vector<std::uint8_t> canvas(static_cast<std::size_t>(width * height), 255);  // white gaps
  auto values = grey.to(torch::kUInt8).contiguous();
  const std::uint8_t* data = values.data_ptr<std::uint8_t>();
  for (std::int64_t k = 0; k < n; ++k)
    for (std::int64_t y = 0; y < side; ++y)
      for (std::int64_t x = 0; x < side; ++x)
        canvas[static_cast<std::size_t>((gap + (k / columns) * (side + gap) + y) * width + gap +
                                        (k % columns) * (side + gap) + x)] = data[(k * side + y) * side + x];
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_GRAY;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, canvas.data(), 0, nullptr))
    throw Error(fmt::format("{}: libpng: {}", file.string(), image.message));
  std::string encoded(size, '\0');
  if (!png_image_write_to_memory(&image, encoded.data(), &size, 0, canvas.data(), 0, nullptr))
    throw Error(fmt::format("{}: libpng: {}", file.string(), image.message));
  encoded.resize(size);
  write_file_atomic(file, encoded);
}

}  // namespace inflab
