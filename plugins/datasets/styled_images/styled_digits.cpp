// The paper's image-generation class-detection data (its Table 2, diffusion rows) on real 8x8
// digits (Debian's python3-sklearn copy), for a conditional denoiser (ddpm_lora). The styles and
// the style/subject modes are styled_images.hpp's; here every image comes from one pool of 1,797
// digits, shuffled by `seed`: the fine-tuning classes take theirs first, the base the rest.
// Conditions: "0".."9", then the style names.
#include <inflab/readers.hpp>
#include <inflab/splits.hpp>
#include <numeric>
#include <random>

#include "styled_images.hpp"

namespace {

class StyledDigits : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    options_ = options;
    deal_ = inflab::styled::read_deal(options, "styled_digits",
                                      {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"});
  }

  inflab::DatasetSplits load() override {
    std::string path = options_.get_string("path");
    if (path.empty())
      path = (std::filesystem::path(inflab::data_cache_root()) / "sklearn" / "digits.csv.gz").string();
    const inflab::DigitsTable table = inflab::parse_digits_csv(
        inflab::read_gzip(path,
                          "run `./inflab setup` (it extracts digits.csv.gz from Debian's python3-sklearn)"),
        path);
    inflab::styled::SourceImages digits;
    digits.side = 8;
    for (std::size_t i = 0; i < table.images.size(); ++i) {
      digits.pixels.insert(digits.pixels.end(), table.images[i].begin(), table.images[i].end());
      digits.labels.push_back(table.labels[i]);
    }
    std::vector<std::int64_t> order(table.images.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(),
                 std::mt19937_64(static_cast<std::uint64_t>(options_.get_int("seed"))));
    return inflab::styled::deal(deal_, digits, order, nullptr);
  }

 private:
  inflab::Options options_;
  inflab::styled::Deal deal_;
};

std::vector<inflab::OptionSpec> options() {
  auto out = inflab::styled::deal_options(1797, 1000, "digits");
  out.push_back({"seed", inflab::OptionType::Int, std::int64_t{0}, "which digits go where"});
  out.push_back(
      {"path", inflab::OptionType::String, std::string(), "digits.csv.gz (default: the data cache)"});
  return out;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "styled_digits", "0.2.0",  // 0.2: style mode pretrains on all ten digits
              "Real 8x8 digits rendered in styles (or held-out subjects) for conditional diffusion class "
              "detection",
              options, StyledDigits)
