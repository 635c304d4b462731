// Image generation with a denoiser (Model::denoise, task "denoising"): DDIM sampling on the DDPM
// schedule, and PNG grids of the results (`inflab sample`).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace inflab {

class Model;

struct SamplingOptions {
  std::int64_t diffusion_steps = 1000;  // the DDPM schedule the model was trained on
  std::int64_t sampling_steps = 50;     // DDIM steps, evenly spaced over the schedule
  std::uint64_t seed = 0;               // draws the starting noise
  double clip = 1.0;                    // the predicted clean image is clipped to [-clip, clip]
  // Classifier-free guidance (Ho & Salimans 2022), as diffusers' guidance_scale: the noise is
  // eps(none) + guidance x (eps(condition) - eps(none)); 1 is the conditional prediction alone.
  double guidance = 1.0;
};

// Throws unless `guidance` can be used with a base pretrained with this condition dropout (a
// denoiser never trained without its condition has no unconditional prediction); `key` names the
// option in the message.
void check_guidance(double guidance, double condition_dropout, const std::string& key);

// Deterministic DDIM (eta = 0, Song et al. 2021) from Gaussian noise: one image per condition id,
// each of `example_shape` (one example as the model sees it, e.g. {64} or {1, 8, 8}).
at::Tensor sample_images(Model& model, const std::vector<std::int64_t>& conditions,
                         at::IntArrayRef example_shape, const SamplingOptions& options);

// Square grey images (n x pixels, or n x 1 x side x side) in [low, high] as one 8-bit PNG grid,
// `columns` wide, written atomically.
void save_png_grid(const std::filesystem::path& file, const at::Tensor& images, std::int64_t columns,
                   double low = -1.0, double high = 1.0);

}  // namespace inflab
