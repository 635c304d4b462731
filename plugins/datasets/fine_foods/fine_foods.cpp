// Amazon fine-food reviews from R's modeldata package (Debian r-cran-modeldata, MIT):
// small_fine_foods, 4000 training and 1000 test reviews labelled "great" or "other".
// `./inflab setup` converts R's lazy-load database once to two TSV files (score<TAB>review,
// tabs and newlines in reviews replaced by spaces). Its documentation notes that the training
// reviews come from only 10 products.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>

namespace {

inflab::LabeledTexts read_tsv(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in)
    throw inflab::Error(
        fmt::format("{}: missing; run `./inflab setup` (it converts small_fine_foods from Debian's "
                    "r-cran-modeldata with Rscript into the data cache)",
                    path.string()));
  inflab::LabeledTexts out;
  std::string line;
  std::getline(in, line);  // header
  if (line != "score\treview")
    throw inflab::Error(
        fmt::format("{}:1: expected the header 'score<TAB>review', found '{}'", path.string(), line));
  for (int number = 2; std::getline(in, line); ++number) {
    auto tab = line.find('\t');
    std::string score = line.substr(0, tab);
    if (tab == std::string::npos || (score != "great" && score != "other"))
      throw inflab::Error(
          fmt::format("{}:{}: expected great or other, a tab, then the review", path.string(), number));
    out.labels.push_back(score == "great");
    out.texts.push_back(line.substr(tab + 1));
  }
  return out;
}

class FineFoods : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }
  inflab::DatasetSplits load() override {
    std::filesystem::path dir = options_.get_string("data_dir");
    if (dir.empty()) dir = std::filesystem::path(inflab::data_cache_root()) / "modeldata";
    return inflab::text_splits("fine_foods", read_tsv(dir / "small_fine_foods_train.tsv"),
                               read_tsv(dir / "small_fine_foods_test.tsv"), options_, {"other", "great"});
  }

 private:
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::text_split_option_specs(1000, 300, 500);
  specs.push_back({"data_dir", inflab::OptionType::String, std::string(),
                   "directory of the TSV files (default: the data cache)"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "fine_foods", "1.0.0",
              "Amazon fine-food reviews, great vs other (Debian r-cran-modeldata)", options, FineFoods)
