// Amazon fine-food reviews from R's modeldata package (Debian r-cran-modeldata, MIT):
// small_fine_foods, 4000 training and 1000 test reviews labelled "great" or "other".
// `./inflab setup` converts R's lazy-load database once to two TSV files (score<TAB>review,
// tabs and newlines in reviews replaced by spaces). Its documentation notes that the training
// reviews come from only 10 products.
#include <fmt/format.h>

#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>

namespace {

inflab::LabeledTexts read_tsv(const std::filesystem::path& path) {
  return inflab::read_labeled_tsv(
      path.string(), "score", "review", "other", "great",
      "`./inflab setup` (it converts small_fine_foods from Debian's r-cran-modeldata "
      "with Rscript into the data cache)");
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
