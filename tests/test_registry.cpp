#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "helpers.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"

using Catch::Matchers::Contains;

TEST_CASE("the registry discovers the built plugins", "[registry]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto estimators = registry.names(inflab::PluginKind::Estimator);
  for (const char* name : {"datainf", "exact", "lissa", "hessian_free"})
    CHECK(std::find(estimators.begin(), estimators.end(), name) != estimators.end());
  CHECK(registry.find(inflab::PluginKind::Dataset, "fashion_mnist").info->kind ==
        inflab::PluginKind::Dataset);
  CHECK(registry.find(inflab::PluginKind::Model, "mlp_lora").file.filename() == "mlp_lora.so");
}

namespace {
bool mapped_in_this_process(const std::filesystem::path& file) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find(file.string()) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST_CASE("a discovered directory loads only the library a command asks for", "[registry]") {
  // Copies in a fresh directory: this process may have loaded build/plugins' files already.
  test::TempDir dir;
  for (const char* name : {"datainf.so", "exact.so", "mlp_lora.so"})
    std::filesystem::copy_file(test::plugin_dir() + "/" + name, dir.path / name);
  std::filesystem::copy_file(test::plugin_dir() + "/lissa.so", dir.path / "renamed.so");
  inflab::Registry registry;
  registry.discover_directory(dir.path);
  CHECK_FALSE(mapped_in_this_process(dir.path / "datainf.so"));
  CHECK(registry.find(inflab::PluginKind::Estimator, "datainf").file == dir.path / "datainf.so");
  CHECK(mapped_in_this_process(dir.path / "datainf.so"));
  CHECK_FALSE(mapped_in_this_process(dir.path / "exact.so"));
  CHECK_FALSE(mapped_in_this_process(dir.path / "mlp_lora.so"));
  // A plugin in a file not named after it is still found: then every library is loaded.
  CHECK(registry.find(inflab::PluginKind::Estimator, "lissa").file == dir.path / "renamed.so");
  CHECK(mapped_in_this_process(dir.path / "exact.so"));
  CHECK(registry.plugins().size() == 4);
  REQUIRE_THROWS_WITH(registry.find(inflab::PluginKind::Estimator, "nope"),
                      Contains("available estimator plugins: datainf, exact, lissa"));
}

TEST_CASE("a plugin library that fails to load breaks only what needs it", "[registry]") {
  test::TempDir dir;
  std::filesystem::copy_file(std::string(INFLAB_BUILD_DIR) + "/test_plugins/abi/abi_mismatch_plugin.so",
                             dir.path / "abi_mismatch_plugin.so");
  for (const char* name : {"datainf.so", "exact.so"})
    std::filesystem::copy_file(test::plugin_dir() + "/" + name, dir.path / name);
  inflab::Registry registry;
  registry.discover_directory(dir.path);
  CHECK(registry.find(inflab::PluginKind::Estimator, "datainf").file == dir.path / "datainf.so");
  // Listing loads every library: the broken one is named (it sorts first) ...
  REQUIRE_THROWS_WITH(registry.plugins(), Contains("abi_mismatch_plugin.so") && Contains("ABI version 999"));
  // ... and the libraries after it stay discoverable.
  CHECK(registry.find(inflab::PluginKind::Estimator, "exact").file == dir.path / "exact.so");
}

TEST_CASE("two discovered files named alike that declare one plugin are refused", "[registry]") {
  test::TempDir first, second;
  std::filesystem::copy_file(test::plugin_dir() + "/datainf.so", first.path / "datainf.so");
  std::filesystem::copy_file(test::plugin_dir() + "/datainf.so", second.path / "datainf.so");
  inflab::Registry registry;
  registry.discover_directory(first.path);
  registry.discover_directory(second.path);
  REQUIRE_THROWS_WITH(registry.find(inflab::PluginKind::Estimator, "datainf"),
                      Contains("two estimator plugins are named 'datainf'"));
  REQUIRE_THROWS_WITH(registry.discover_directory(first.path / "missing"), Contains("does not exist"));
}

TEST_CASE("an unknown plugin name gets the list and the closest match", "[registry]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  REQUIRE_THROWS_WITH(registry.find(inflab::PluginKind::Estimator, "datainff"),
                      Contains("unknown estimator plugin 'datainff'") &&
                          Contains("did you mean 'datainf'?") && Contains("hessian_free"));
  // A dataset name is not an estimator: the kinds are separate namespaces.
  REQUIRE_THROWS_WITH(registry.find(inflab::PluginKind::Estimator, "fashion_mnist"),
                      Contains("available estimator plugins"));
}

TEST_CASE("a plugin built for another ABI version is refused, naming both versions", "[registry]") {
  inflab::Registry registry;
  REQUIRE_THROWS_WITH(registry.load_directory(std::string(INFLAB_BUILD_DIR) + "/test_plugins/abi"),
                      Contains("abi_mismatch_plugin.so") && Contains("ABI version 999") &&
                          Contains("ABI version " + std::to_string(inflab::kAbiVersion)));
  CHECK(registry.plugins().empty());
}

TEST_CASE("a plugin built with another LibTorch is refused, naming both builds", "[registry]") {
  inflab::Registry registry;
  REQUIRE_THROWS_WITH(registry.load_directory(std::string(INFLAB_BUILD_DIR) + "/test_plugins/fingerprint"),
                      Contains("fingerprint_mismatch_plugin.so") && Contains("libtorch 2.1.0") &&
                          Contains(inflab::core_build_fingerprint()) && Contains("libtorch 1.13"));
  CHECK(registry.plugins().empty());
  // The core's own fingerprint names what a plugin must match.
  CHECK_THAT(inflab::core_build_fingerprint(),
             Contains("inflab-abi " + std::to_string(inflab::kAbiVersion)) && Contains("cxx11-abi"));
}

TEST_CASE("plugins are created with their validated options", "[registry]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  const auto& record = registry.find(inflab::PluginKind::Estimator, "lissa");
  auto options = inflab::default_options("lissa", record.info->options());
  options.set("variant", std::string("paper_typo"));
  REQUIRE_THROWS_WITH(registry.create(inflab::PluginKind::Estimator, "lissa", options), Contains("variant"));
}

TEST_CASE("`inflab plugins` lists every plugin with kind, name, version and file", "[registry][cli]") {
  auto result = test::run_command(std::string(INFLAB_BINARY) + " plugins");
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output,
             Contains("estimator") && Contains("datainf") && Contains("1.0.0") && Contains("datainf.so"));
  CHECK_THAT(result.output, Contains("dataset") && Contains("fashion_mnist"));
  auto detail = test::run_command(std::string(INFLAB_BINARY) + " plugins lissa");
  CHECK_THAT(detail.output, Contains("iterations") && Contains("reference_code"));
  auto misspelt = test::run_command(std::string(INFLAB_BINARY) + " plugins fashion_mnsit");
  CHECK(misspelt.exit_code == 2);
  CHECK_THAT(misspelt.output, Contains("no plugin named 'fashion_mnsit'") && Contains("'fashion_mnist'"));
}
