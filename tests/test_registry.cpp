#include <catch2/catch.hpp>

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
