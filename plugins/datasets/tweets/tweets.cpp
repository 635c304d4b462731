// Tweets of @realDonaldTrump, 2009-2017, from R's dslabs (Debian r-cran-dslabs, Artistic-2.0):
// a known authorship task, "Twitter for Android" (label 1) vs "Twitter for iPhone" (label 0),
// retweets excluded. `./inflab setup` converts the data once to a TSV (source<TAB>text).
#include <fmt/format.h>

#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>

namespace {

class Tweets : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }

  inflab::DatasetSplits load() override {
    std::filesystem::path path = options_.get_string("path");
    if (path.empty()) path = std::filesystem::path(inflab::data_cache_root()) / "dslabs" / "trump_tweets.tsv";
    inflab::LabeledTexts all =
        inflab::read_labeled_tsv(path.string(), "source", "text", "iphone", "android",
                                 "`./inflab setup` (it converts trump_tweets from Debian's r-cran-dslabs "
                                 "with Rscript into the data cache)");
    return inflab::text_splits("tweets", all, options_, {"iphone", "android"});
  }

 private:
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::text_split_option_specs(1000, 300, 500);
  specs.push_back({"path", inflab::OptionType::String, std::string(), "the TSV (default: the data cache)"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "tweets", "1.0.0", "Trump tweets, Android vs iPhone authorship (Debian r-cran-dslabs)",
              options, Tweets)
