// The paper's text-generation class-detection tasks (section 4.2), generated deterministically
// from a seed: 10 classes, `train_per_class` training and `test_per_class` test instructions each.
//   sentence_transformations  10 mechanical rewrites of real sentences (from the fine-food
//                             reviews of Debian's r-cran-modeldata, the fine_foods dataset's file)
//   math                      10 word-problem templates, the answer alone
//   math_reasoning            the same problems answered with a one-line worked solution
// Each example is a prompt and a response; the model's chat template wraps the prompt and the
// causal-LM loss covers the response. The label is the class (the rewrite or the template).
#include <ATen/ops/empty.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>
#include <random>
#include <set>
#include <sstream>

namespace {

using Words = std::vector<std::string>;

Words split_words(const std::string& s) {
  std::istringstream in(s);
  Words out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}
std::string join(const Words& words, const std::string& sep = " ") {
  std::string out;
  for (std::size_t i = 0; i < words.size(); ++i) out += (i ? sep : "") + words[i];
  return out;
}

// Real sentences of 4 to 9 plain lower-case words, from the reviews, deduplicated, in file order.
std::vector<std::string> review_sentences(const std::filesystem::path& file) {
  inflab::LabeledTexts reviews = inflab::read_labeled_tsv(
      file.string(), "score", "review", "other", "great",
      "`./inflab setup` (it converts small_fine_foods from Debian's r-cran-modeldata with Rscript)");
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& review : reviews.texts) {
    std::string sentence;
    for (char c : review + ".") {
      if (c == '.' || c == '!' || c == '?') {
        Words words = split_words(sentence);
        const bool plain = std::all_of(sentence.begin(), sentence.end(), [](char x) {
          return std::islower(static_cast<unsigned char>(x)) || x == ' ';
        });
        if (plain && words.size() >= 4 && words.size() <= 9) {
          std::string s = join(words);
          if (seen.insert(s).second) out.push_back(s);
        }
        sentence.clear();
      } else {
        sentence += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
    }
  }
  return out;
}

struct Example {
  std::string prompt, response;
};

const std::vector<std::string>& transformation_names() {
  static const std::vector<std::string> names{"reverse_words",   "uppercase",   "sort_words", "remove_vowels",
                                              "double_words",    "underscores", "capitalize", "initials",
                                              "reverse_letters", "count_words"};
  return names;
}

Example transform(std::size_t kind, const std::string& sentence) {
  static const std::vector<std::string> instructions{"Reverse the order of the words",
                                                     "Write in upper case",
                                                     "Sort the words alphabetically",
                                                     "Remove every vowel",
                                                     "Write every word twice",
                                                     "Replace the spaces with underscores",
                                                     "Capitalize every word",
                                                     "Give the first letter of every word",
                                                     "Reverse the letters of every word",
                                                     "Count the words"};
  Words w = split_words(sentence);
  std::string out;
  switch (kind) {
    case 0:
      std::reverse(w.begin(), w.end()), out = join(w);
      break;
    case 1:
      out = sentence, std::transform(out.begin(), out.end(), out.begin(), ::toupper);
      break;
    case 2:
      std::sort(w.begin(), w.end()), out = join(w);
      break;
    case 3:
      for (char c : sentence)
        if (!std::strchr("aeiou", c)) out += c;
      break;
    case 4: {
      Words d;
      for (const auto& x : w) d.push_back(x), d.push_back(x);
      out = join(d);
      break;
    }
    case 5:
      out = join(w, "_");
      break;
    case 6:
      for (auto& x : w) x[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(x[0])));
      out = join(w);
      break;
    case 7:
      for (const auto& x : w) out += x[0];
      break;
    case 8:
      for (auto& x : w) std::reverse(x.begin(), x.end());
      out = join(w);
      break;
    default:
      out = std::to_string(w.size());
      break;
  }
  return {instructions[kind] + ": " + sentence, out};
}

const std::vector<std::string>& math_names() {
  static const std::vector<std::string> names{"addition",  "subtraction", "multiplication", "division",
                                              "perimeter", "area",        "distance",       "cost",
                                              "age",       "average"};
  return names;
}

Example math_problem(std::size_t kind, std::mt19937_64& rng, bool reasoning) {
  auto draw = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  static const std::vector<std::string> people{"Anna", "Ben",   "Carla", "David",
                                               "Emma", "Farid", "Grace", "Hugo"};
  const std::string who = people[static_cast<std::size_t>(draw(0, 7))];
  int a = draw(2, 40), b = draw(2, 40), answer = 0;
  std::string problem, steps;
  switch (kind) {
    case 0:
      answer = a + b,
      problem =
          fmt::format("{} has {} apples and buys {} more. How many apples does {} have now?", who, a, b, who);
      steps = fmt::format("{} + {} = {}", a, b, answer);
      break;
    case 1:
      a += b, answer = a - b;
      problem = fmt::format("{} had {} stickers and gave away {}. How many stickers are left?", who, a, b);
      steps = fmt::format("{} - {} = {}", a, b, answer);
      break;
    case 2:
      a = draw(2, 12), b = draw(2, 12), answer = a * b;
      problem = fmt::format("{} fills {} boxes with {} pencils each. How many pencils is that?", who, a, b);
      steps = fmt::format("{} x {} = {}", a, b, answer);
      break;
    case 3:
      b = draw(2, 9), answer = draw(2, 12), a = b * answer;
      problem = fmt::format(
          "{} shares {} cookies equally among {} friends. How many cookies does each friend get?", who, a, b);
      steps = fmt::format("{} / {} = {}", a, b, answer);
      break;
    case 4:
      answer = 2 * (a + b);
      problem = fmt::format("A garden is {} meters long and {} meters wide. What is its perimeter in meters?",
                            a, b);
      steps = fmt::format("2 x ({} + {}) = {}", a, b, answer);
      break;
    case 5:
      a = draw(2, 15), b = draw(2, 15), answer = a * b;
      problem = fmt::format("A room is {} meters long and {} meters wide. What is its area in square meters?",
                            a, b);
      steps = fmt::format("{} x {} = {}", a, b, answer);
      break;
    case 6:
      a = draw(20, 90), b = draw(2, 6), answer = a * b;
      problem =
          fmt::format("A train travels at {} km per hour for {} hours. How far does it go in km?", a, b);
      steps = fmt::format("{} x {} = {}", a, b, answer);
      break;
    case 7:
      a = draw(2, 9), b = draw(2, 12), answer = a * b;
      problem = fmt::format("{} buys {} notebooks at {} dollars each. How many dollars does {} pay?", who, b,
                            a, who);
      steps = fmt::format("{} x {} = {}", b, a, answer);
      break;
    case 8:
      a = draw(5, 30), b = draw(2, 20), answer = a + b;
      problem =
          fmt::format("{} is {} years old. Her aunt is {} years older. How old is the aunt?", who, a, b);
      steps = fmt::format("{} + {} = {}", a, b, answer);
      break;
    default:
      answer = draw(5, 50), b = draw(1, 4), a = answer - b;
      problem = fmt::format("{} scored {} and {} points in two games. What is the average score?", who, a,
                            answer + b);
      steps = fmt::format("({} + {}) / 2 = {}", a, answer + b, answer);
      break;
  }
  return {problem, reasoning ? fmt::format("{}. The answer is {}.", steps, answer) : std::to_string(answer)};
}

class GenerationTasks : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    task_ = options.get_string("task");
    if (task_ != "sentence_transformations" && task_ != "math" && task_ != "math_reasoning")
      throw inflab::Error(
          fmt::format("dataset generation_tasks: task must be sentence_transformations, math or "
                      "math_reasoning, found \"{}\"",
                      task_));
    train_ = options.get_int("train_per_class"), test_ = options.get_int("test_per_class");
    seed_ = static_cast<std::uint64_t>(options.get_int("seed"));
    dir_ = options.get_string("data_dir");
    if (train_ < 1 || test_ < 1)
      throw inflab::Error("dataset generation_tasks: train_per_class and test_per_class must be >= 1");
  }

  inflab::DatasetSplits load() override {
    inflab::DatasetSplits out;
    const bool sentences = task_ == "sentence_transformations";
    out.class_names = sentences ? transformation_names() : math_names();
    std::vector<std::string> pool;
    if (sentences) {
      std::filesystem::path dir = dir_.empty()
                                      ? std::filesystem::path(inflab::data_cache_root()) / "modeldata"
                                      : std::filesystem::path(dir_);
      pool = review_sentences(dir / "small_fine_foods_train.tsv");
      const auto needed = static_cast<std::size_t>(10 * (train_ + test_));
      if (pool.size() < needed)
        throw inflab::Error(fmt::format("dataset generation_tasks: {} usable review sentences, {} needed",
                                        pool.size(), needed));
      std::shuffle(pool.begin(), pool.end(), std::mt19937_64(seed_));
    }
    std::mt19937_64 rng(seed_ + 1);
    std::size_t next_sentence = 0;
    std::int64_t id = 0;
    std::vector<std::int64_t> train_labels, test_labels;
    // Example-major within a class; each sentence is used once across all classes and splits.
    for (std::size_t kind = 0; kind < 10; ++kind)
      for (std::int64_t k = 0; k < train_ + test_; ++k) {
        Example e = sentences ? transform(kind, pool[next_sentence++])
                              : math_problem(kind, rng, task_ == "math_reasoning");
        inflab::Split& split = k < train_ ? out.train : out.validation;
        split.texts.push_back(e.prompt);
        split.responses.push_back(e.response);
        split.ids.push_back(id++);
        (k < train_ ? train_labels : test_labels).push_back(static_cast<std::int64_t>(kind));
      }
    out.train.labels = as_tensor(train_labels);
    out.validation.labels = as_tensor(test_labels);
    return out;
  }

 private:
  static at::Tensor as_tensor(const std::vector<std::int64_t>& labels) {
    at::Tensor t = at::empty({static_cast<std::int64_t>(labels.size())}, c10::kLong);
    std::copy(labels.begin(), labels.end(), t.data_ptr<std::int64_t>());
    return t;
  }

  std::string task_, dir_;
  std::int64_t train_ = 90, test_ = 10;
  std::uint64_t seed_ = 0;
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"task", inflab::OptionType::String, std::string("sentence_transformations"),
       "sentence_transformations, math or math_reasoning"},
      {"train_per_class", inflab::OptionType::Int, std::int64_t{90},
       "training examples per class (the paper: 90)", false, inflab::between(1, 1e6)},
      {"test_per_class", inflab::OptionType::Int, std::int64_t{10}, "test examples per class (the paper: 10)",
       false, inflab::between(1, 1e6)},
      {"seed", inflab::OptionType::Int, std::int64_t{0}, "draws the sentences and the numbers"},
      {"data_dir", inflab::OptionType::String, std::string(),
       "directory of small_fine_foods_train.tsv (default: the data cache)"},
  };
}

}  // namespace

INFLAB_PLUGIN(
    Dataset, "generation_tasks", "0.1.0",
    "The paper's text-generation class-detection tasks: 10 sentence rewrites of real reviews, or 10 math "
    "word-problem templates (answer alone or with a worked step)",
    options, GenerationTasks)
